"""Accelerate's own configuration applies where no option chose: mixed precision from ACCELERATE_MIXED_PRECISION
or `accelerate launch --mixed_precision`, and the effective precision is what the run record and card show."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, tiny_training_args, write_tiny_unet_config

from ddpm_zoo.config import resolve_config
from ddpm_zoo.presets import get_preset
from ddpm_zoo.training import accelerator_precision


def precision_for(given: dict, monkeypatch, accelerate_setting: str | None) -> str | None:
    if accelerate_setting is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", accelerate_setting)
    config = resolve_config({"output_dir": "unused", **given}, conditional=False)
    return accelerator_precision(config, get_preset(config.preset))


def test_mixed_precision_is_unset_by_default():
    assert resolve_config({"preset": "cifar10-ddpm"}, conditional=False).mixed_precision is None


@pytest.mark.parametrize(
    ("given", "accelerate_setting", "expected"),
    [
        ({"preset": "cifar10-ddpm"}, "bf16", None),  # no option: accelerate decides
        ({"preset": "cifar10-ddpm"}, None, None),
        ({"preset": "cifar10-ddpm", "mixed_precision": "no"}, "bf16", "no"),  # an option given wins
        ({"preset": "mnist-tiny"}, "fp16", None),  # the preset's bf16 yields to accelerate's fp16
        ({"preset": "mnist-tiny"}, None, "bf16"),  # and applies where accelerate names none
        ({"preset": "mnist-tiny"}, "no", "bf16"),
        ({"preset": "mnist-tiny"}, "", "bf16"),  # set but empty: as unset
        ({"preset": "mnist-tiny", "mixed_precision": "no"}, "bf16", "no"),
    ],
)
def test_accelerates_setting_wins_where_no_option_chose(given, accelerate_setting, expected, monkeypatch):
    assert precision_for(given, monkeypatch, accelerate_setting) == expected


def train_without_precision_option(tmp_path, command: list[str], env: dict) -> dict:
    """A tiny cifar10-ddpm-preset run (whose preset sets no precision) given no --mixed_precision; returns
    the run record and the card's summary."""
    output = tmp_path / "run"
    args = tiny_training_args(
        output, write_tiny_unet_config(tmp_path), steps=2, preset="cifar10-ddpm", dataset_name="mnist-5k"
    )
    at = args.index("--mixed_precision")
    del args[at : at + 2]
    result = subprocess.run(
        [*command, str(REPO_ROOT / "train_unconditional.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((output / "ddpm_zoo_run.json").read_text())
    card = json.loads((output / "training_summary.json").read_text())["card"]
    assert "| Mixed precision | bf16 |" in (output / "README.md").read_text()
    return {"record": record["mixed_precision"], "card": card["mixed_precision"]}


@pytest.mark.slow
def test_accelerate_mixed_precision_environment_variable_applies(tmp_path):
    shown = train_without_precision_option(tmp_path, [sys.executable], {"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert shown == {"record": "bf16", "card": "bf16"}


@pytest.mark.slow
def test_accelerate_launch_mixed_precision_applies(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1"]
    launcher += ["--num_machines", "1", "--dynamo_backend", "no", "--mixed_precision", "bf16"]
    env = {"ACCELERATE_MIXED_PRECISION": ""}  # the launcher must set it, not the caller
    shown = train_without_precision_option(tmp_path, launcher, env)
    assert shown == {"record": "bf16", "card": "bf16"}

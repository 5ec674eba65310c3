"""Shared test fixtures: test-sized models (a few thousand parameters, 8-16 px) and script launching."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel


def tiny_unet(
    channels: int = 1, size: int = 8, num_class_embeds: int | None = None, out_channels: int | None = None
) -> UNet2DModel:
    """A ~45k-parameter UNet2DModel: two levels, attention at the lower one; `out_channels` 2 x `channels`
    makes a learned-variance model."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=out_channels or channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture(autouse=True)
def online_whatever_the_caller_exported(monkeypatch):
    """Each test starts in huggingface_hub's and datasets' online mode, whatever offline switches the caller
    exported (their constants are read at import time); a test about offline mode sets it itself."""
    from huggingface_hub import constants

    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    if "datasets.config" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets.config"], "HF_HUB_OFFLINE", False)


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and lose much when other jobs share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


REPO_ROOT = Path(__file__).resolve().parents[1]

BLOCK_DDPM_ZOO = (
    "import sys\n"
    "class _Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'ddpm_zoo' or name.startswith('ddpm_zoo.'):\n"
    "            raise ImportError('ddpm_zoo must not be needed here')\n"
    "sys.meta_path.insert(0, _Block())\n"
)


def write_tiny_unet_config(folder: Path, channels: int = 1, size: int = 8) -> Path:
    """Save the test-sized UNet's config.json for `--model_config_name_or_path`."""
    path = folder / "tiny_unet"
    tiny_unet(channels, size).save_config(path)
    return path


def launch(script: str, args: list[str], num_processes: int = 1, timeout: float = 300, **kwargs):
    """Run a training script under the real `accelerate launch` on CPU, returning the CompletedProcess.

    Several processes go through Accelerate's torchrun launcher (`--multi_gpu`), which on a machine
    without GPUs forms a gloo process group; Accelerate's `--cpu` launcher starts one process unless
    mpirun is configured.
    """
    if num_processes > 1:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        mode = ["--multi_gpu", "--main_process_port", str(port)]
    else:
        mode = ["--cpu"]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *mode,
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO_ROOT / script),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def tiny_training_args(output_dir: Path, config_dir: Path, steps: int = 6, **overrides) -> list[str]:
    """Options for a few-step run of the test-sized UNet on the embedded digits at 8 px."""
    options = {
        "model_config_name_or_path": str(config_dir),
        "resolution": "8",
        "output_dir": str(output_dir),
        "train_batch_size": "16",
        "max_train_steps": str(steps),
        "checkpointing_steps": "3",
        "save_images_steps": "1000",
        "num_sample_images": "4",
        "ddpm_num_inference_steps": "3",
        "logging_steps": "1",
        "lr_warmup_steps": "2",
        "logger": "none",
        "mixed_precision": "no",
        **overrides,
    }
    # Test-sized runs never compile (a long --max_train_steps would otherwise turn torch.compile on).
    return [*(item for key, value in options.items() for item in (f"--{key}", value)), "--no-compile"]

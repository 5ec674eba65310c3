"""Experiment trackers and the loss log: --report_to reaches Accelerate's trackers with numeric options, the
loss and the sample grids; loss.csv is written by the main process and continued across a resume."""

import csv
import json
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT, launch, tiny_training_args, write_tiny_unet_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from ddpm_zoo.checkpoints import append_loss_row, start_loss_log
from ddpm_zoo.config import options


def read_loss_log(folder) -> list[dict]:
    with (folder / "loss.csv").open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tracked")
    output = root / "digits-run"
    args = tiny_training_args(output, write_tiny_unet_config(root), report_to="tensorboard", save_images_steps="3")
    result = launch("train_unconditional.py", [*args, "--self_guidance_clusters", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.slow
def test_tensorboard_gets_the_loss_the_sample_grids_and_numeric_options(tensorboard_run):
    # the project is the output folder's name: logs/<project>/ holds the event file and the options
    [events] = (tensorboard_run / "logs" / "digits-run").glob("events.out.tfevents.*")
    board = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0}).Reload()
    assert [event.step for event in board.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
    assert {"lr", "avg_loss", "ema_decay"} <= set(board.Tags()["scalars"])
    grids = board.Images("samples")
    assert [grid.step for grid in grids] == [3, 6]
    assert grids[0].width > 8 and grids[0].height > 8  # the whole grid, not one 8-px image
    [options] = (tensorboard_run / "logs" / "digits-run").glob("*/hparams.yml")
    hparams = yaml.safe_load(options.read_text())
    assert hparams["learning_rate"] == 0.002 and hparams["train_batch_size"] == 16 and hparams["use_ema"] is True
    assert hparams["hub_model_id"] == "null" and hparams["snr_gamma"] == 5.0 and hparams["logger"] == "tensorboard"


@pytest.mark.slow
def test_loss_log_has_one_row_per_logging_step(tensorboard_run):
    rows = read_loss_log(tensorboard_run)
    assert list(rows[0]) == ["step", "loss", "lr", "ema_decay", "wall_seconds"]
    assert [int(row["step"]) for row in rows] == [1, 2, 3, 4, 5, 6]
    summary = json.loads((tensorboard_run / "training_summary.json").read_text())
    assert float(rows[-1]["loss"]) == summary["final_loss"]
    decays = [float(row["ema_decay"]) for row in rows]  # the warm-up: 0 at the first step, then growing
    assert decays[0] == 0 and decays == sorted(decays) and 0 < decays[-1] < 1
    # mnist-tiny's 0.002 with 2 warm-up steps, then cosine decay to 0 at the last step
    assert [float(row["lr"]) for row in rows[:2]] == [0.001, 0.002] and float(rows[-1]["lr"]) == 0
    seconds = [float(row["wall_seconds"]) for row in rows]
    assert seconds == sorted(seconds) and seconds[0] > 0


@pytest.mark.slow
def test_a_resumed_run_continues_the_loss_log_without_the_abandoned_rows(tmp_path, tensorboard_run):
    """Resumed from checkpoint-3 of a folder whose log already reached step 6: rows 4-6 are dropped and written
    again by the resumed run (with the same losses, as training is deterministic), rows 1-3 stay as they were."""
    output = tmp_path / "resumed"
    output.mkdir()
    shutil.copytree(tensorboard_run / "checkpoint-3", output / "checkpoint-3")
    shutil.copy(tensorboard_run / "loss.csv", output / "loss.csv")
    args = tiny_training_args(output, write_tiny_unet_config(tmp_path), resume_from_checkpoint="latest")
    result = launch("train_unconditional.py", [*args, "--self_guidance_clusters", "0"])
    assert result.returncode == 0, result.stderr[-3000:]
    original, resumed = read_loss_log(tensorboard_run), read_loss_log(output)
    assert [int(row["step"]) for row in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[:3] == original[:3]
    assert [row["loss"] for row in resumed[3:]] == [row["loss"] for row in original[3:]]


RECORDING_TRACKER = """
import json, sys
import numpy as np
from accelerate.tracking import GeneralTracker, register_tracker_class
from ddpm_zoo.commands.train import build_parser
from ddpm_zoo.config import options, resolve_config
from ddpm_zoo.training import run_training

class RecordingTracker(GeneralTracker):
    name = "recording"
    requires_logging_directory = False

    def __init__(self, run_name, **kwargs):
        super().__init__()
        self.record = {"project": run_name, "logs": [], "images": []}

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        self.record["config"] = {key: [type(value).__name__, value] for key, value in values.items()}

    def log(self, values, step=None, **kwargs):
        self.record["logs"].append([step, sorted(values)])

    def log_images(self, values, step=None, **kwargs):
        for key, images in values.items():
            self.record["images"].append([key, step, [list(np.asarray(image).shape) for image in images]])

    def finish(self):
        print(json.dumps(self.record))

register_tracker_class(RecordingTracker)
args = build_parser(False).parse_args(sys.argv[1:])
given = {spec.name: getattr(args, spec.name, None) for spec in options() if spec.name != "conditional"}
run_training(resolve_config({**given, "logger": "recording"}, conditional=False))
"""


@pytest.mark.slow
def test_a_custom_tracker_gets_typed_options_the_loss_and_the_grids_through_log_images(tmp_path):
    output = tmp_path / "out"
    args = tiny_training_args(output, write_tiny_unet_config(tmp_path), steps=4, save_images_steps="2")
    args += ["--self_guidance_clusters", "0", "--tracker_project_name", "digits", "--no-use_ema"]
    result = subprocess.run(
        [sys.executable, "-c", RECORDING_TRACKER, *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["project"] == "digits"
    config = record["config"]
    assert config["learning_rate"] == ["float", 0.002] and config["max_train_steps"] == ["int", 4]
    assert config["use_ema"] == ["bool", False] and config["lr_scheduler"][0] == "str"
    assert config["hub_model_id"] == ["str", "null"] and "hub_token" not in config
    assert record["logs"] == [[step, ["avg_loss", "loss", "lr"]] for step in (1, 2, 3, 4)]
    assert [image[:2] for image in record["images"]] == [["samples", 2], ["samples", 4]]
    [[height, width, channels]] = record["images"][0][2]  # one grid of the 4 images
    assert channels == 3 and height > 8 and width > 8
    rows = read_loss_log(output)
    assert [row["ema_decay"] for row in rows] == ["", "", "", ""]


def test_loss_log_keeps_rows_up_to_the_resumed_step_and_drops_a_torn_line(tmp_path):
    log = start_loss_log(tmp_path, 0)
    for step in (2, 4, 6):
        append_loss_row(log, step, 0.5 / step, 1e-4, 0.9, step * 1.5)
    with log.open("a") as file:
        file.write("8,0.0")  # the last line of a run killed while writing it
    assert start_loss_log(tmp_path, 8) == log
    assert [line.split(",")[0] for line in log.read_text().splitlines()] == ["step", "2", "4", "6"]
    start_loss_log(tmp_path, 4)
    assert log.read_text().splitlines() == [
        "step,loss,lr,ema_decay,wall_seconds",
        "2,0.25,0.0001,0.9,3.000",
        "4,0.125,0.0001,0.9,6.000",
    ]
    append_loss_row(log, 6, 0.1, 1e-4, None, 9.0)  # without EMA the decay is empty
    assert log.read_text().splitlines()[-1] == "6,0.1,0.0001,,9.000"
    start_loss_log(tmp_path, 0)  # a run that starts over
    assert log.read_text().splitlines() == ["step,loss,lr,ema_decay,wall_seconds"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_default_tracker_comes_with_a_plain_install():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    default = next(spec for spec in options() if spec.name == "logger").default
    assert default == "tensorboard"
    assert [dep for dep in project["dependencies"] if dep.split(">")[0].split("=")[0].strip() == default]

"""Interrupted runs lose nothing, resume is exact, bad input gets one clear line and exit status 2."""

import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets
import psutil
import pytest
import torch
from conftest import REPO_ROOT, launch, tiny_training_args, write_tiny_unet_config
from diffusers import UNet2DModel
from PIL import Image
from safetensors.torch import load_file

from ddpm_zoo import checkpoints
from ddpm_zoo.commands.train import main as training_main
from ddpm_zoo.errors import UserInputError

SCRIPT = str(REPO_ROOT / "train_unconditional.py")
LONG_RUN = {"checkpointing_steps": "10", "logging_steps": "1", "lr_warmup_steps": "5"}


@pytest.fixture(scope="module")
def unet_config(tmp_path_factory):
    return write_tiny_unet_config(tmp_path_factory.mktemp("config"))


def run_script(args: list[str], script: str = SCRIPT, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=240, env=env, **kwargs
    )


def start_script(args: list[str]) -> subprocess.Popen:
    """Start a run in its own process group, as a terminal or a job scheduler would signal it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, SCRIPT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def assert_same_weights(first: Path, second: Path) -> None:
    expected, actual = load_file(first), load_file(second)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name


# ---------------------------------------------------------------- checkpoints


def test_latest_ignores_half_written_checkpoints(tmp_path):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.STATE_FILE).write_text("{}")
    (tmp_path / "checkpoint-9").mkdir()
    (tmp_path / ".checkpoint-12.tmp").mkdir()
    assert checkpoints.resolve_resume_path("latest", tmp_path) == tmp_path / "checkpoint-6"
    checkpoints.prune_checkpoints(tmp_path, total_limit=1, newest=6)
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-6"]


def test_pruning_keeps_the_checkpoint_just_written_and_sets_the_abandoned_branch_aside(tmp_path):
    """Resumed from checkpoint-3 of a folder that also holds checkpoint-6, the run wrote checkpoint-4:
    checkpoint-4 is kept whatever the limit, and checkpoint-6, of the abandoned branch, is renamed (not
    deleted) so that `latest` cannot pick it."""
    for step in (3, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / checkpoints.STATE_FILE).write_text("{}")
    (tmp_path / "abandoned-checkpoint-6").mkdir()
    checkpoints.prune_checkpoints(tmp_path, total_limit=1, newest=4)
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-4"]
    assert (tmp_path / "abandoned-checkpoint-6-2" / checkpoints.STATE_FILE).exists()
    assert checkpoints.resolve_resume_path("latest", tmp_path) == tmp_path / "checkpoint-4"


def test_a_run_record_without_checkpoints_or_pipeline_does_not_block_a_rerun(tmp_path):
    """A run that stopped before saving anything (e.g. on a corrupt image while streaming) holds nothing to lose."""
    (tmp_path / checkpoints.RUN_RECORD).write_text("{}")
    (tmp_path / "logs").mkdir()
    checkpoints.check_output_dir(tmp_path, overwrite=False, resuming=False, resume=None)
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / checkpoints.STATE_FILE).write_text("{}")
    with pytest.raises(UserInputError, match="already holds a training run"):
        checkpoints.check_output_dir(tmp_path, overwrite=False, resuming=False, resume=None)


def test_a_checkpoint_records_its_unet_and_tolerates_options_added_later(tmp_path):
    unet = UNet2DModel(**json.loads((Path(write_tiny_unet_config(tmp_path)) / "config.json").read_text()))
    state = {"global_step": 3, "unet_config": checkpoints.unet_config_record(unet)}
    del state["unet_config"]["norm_eps"]  # as if written by a diffusers without that option
    (tmp_path / checkpoints.STATE_FILE).write_text(json.dumps(state))
    checkpoints.check_resumable(tmp_path, unet, use_ema=False)
    state["unet_config"]["norm_num_groups"] = 1
    (tmp_path / checkpoints.STATE_FILE).write_text(json.dumps(state))
    with pytest.raises(UserInputError, match="differs from this run's in norm_num_groups"):
        checkpoints.check_resumable(tmp_path, unet, use_ema=False)
    (tmp_path / checkpoints.STATE_FILE).write_text("{truncated")
    with pytest.raises(UserInputError, match="training_state.json cannot be read"):
        checkpoints.check_resumable(tmp_path, unet, use_ema=False)


@pytest.mark.slow
def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, unet_config):
    """The first new checkpoint lands on the step of an abandoned one: that one is renamed, not overwritten."""
    output = tmp_path / "run"
    args = {"checkpoints_total_limit": "5", "self_guidance_clusters": "0"}
    assert run_script(tiny_training_args(output, unet_config, steps=9, **args)).returncode == 0
    old_six = folder_digest(output / "checkpoint-6")
    resumed = run_script(
        tiny_training_args(output, unet_config, steps=9, resume_from_checkpoint="checkpoint-3", **args)
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert folder_digest(output / "abandoned-checkpoint-6") == old_six
    assert (output / "abandoned-checkpoint-9").is_dir()
    assert [p.name for p in checkpoints.complete_checkpoints(output)] == [
        "checkpoint-3",
        "checkpoint-6",
        "checkpoint-9",
    ]


@pytest.mark.slow
def test_sigkill_then_resume_reaches_the_same_parameters(tmp_path, unet_config):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    args = {**LONG_RUN, "checkpoints_total_limit": "100"}
    result = run_script(tiny_training_args(reference, unet_config, steps=120, **args))
    assert result.returncode == 0, result.stderr[-3000:]

    process = start_script(tiny_training_args(killed, unet_config, steps=120, **args))
    wait_for(killed / "checkpoint-20", process)
    time.sleep(random.uniform(0.0, 0.5))
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "model_index.json").exists(), "the run finished before it could be killed"

    resumed = run_script(tiny_training_args(killed, unet_config, steps=120, resume_from_checkpoint="latest", **args))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(
        reference / "checkpoint-120" / "model.safetensors", killed / "checkpoint-120" / "model.safetensors"
    )
    unet_weights = "unet/diffusion_pytorch_model.safetensors"
    assert_same_weights(reference / unet_weights, killed / unet_weights)


@pytest.mark.slow
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_exits_non_zero(tmp_path, unet_config, signal_number):
    output = tmp_path / "run"
    process = start_script(tiny_training_args(output, unet_config, steps=100_000, **LONG_RUN))
    wait_for(output / "checkpoint-10", process)
    os.killpg(process.pid, signal_number)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal_number
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("error: interrupted at step ") and "--resume_from_checkpoint latest" in message
    step = int(message.split("interrupted at step ")[1].split(";")[0])
    assert (output / f"checkpoint-{step}" / checkpoints.STATE_FILE).exists()
    assert not (output / "model_index.json").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_keeps_checkpoints_and_publishes_nothing(tmp_path, unet_config):
    output = tmp_path / "run"
    args = tiny_training_args(
        output,
        unet_config,
        steps=50,
        learning_rate="1e30",
        max_grad_norm="1e30",
        lr_warmup_steps="4",
        lr_scheduler="constant_with_warmup",
        checkpointing_steps="1",
        checkpoints_total_limit="100",
    )
    result = run_script(args)
    assert result.returncode == 3
    message = result.stderr.strip().splitlines()[-1]
    assert "loss became non-finite" in message and "nothing was published" in message
    kept = checkpoints.complete_checkpoints(output)
    assert kept and str(kept[-1]) in message
    assert not (output / "model_index.json").exists()


@contextlib.contextmanager
def small_disk(path: Path, size_kib: int):
    """A tmpfs of `size_kib` at `path` where mounting is allowed, else a per-file size limit for children."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(path)], capture_output=True
    )
    try:
        yield None if mounted.returncode == 0 else size_kib * 1024
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.mark.slow
def test_full_disk_fails_cleanly_and_keeps_the_previous_checkpoint(tmp_path, unet_config):
    disk = tmp_path / "disk"
    with small_disk(disk, size_kib=6000) as file_limit:
        output = disk / "run"
        args = {"checkpoints_total_limit": "100", "save_images_steps": "100000"}
        first = run_script(tiny_training_args(output, unet_config, steps=3, **args))
        assert first.returncode == 0, first.stderr[-3000:]
        before = folder_digest(output / "checkpoint-3")
        if file_limit is None:
            free = shutil.disk_usage(disk).free
            (disk / "filler").write_bytes(b"\0" * max(0, free - 64 * 1024))

        def limit_file_size():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

        resumed = run_script(
            tiny_training_args(output, unet_config, steps=6, resume_from_checkpoint="latest", **args),
            preexec_fn=limit_file_size if file_limit else None,
        )
        assert resumed.returncode == 1
        message = resumed.stderr.strip().splitlines()[-1]
        assert message.startswith("error: cannot write to") and "checkpoint-3" in message
        assert folder_digest(output / "checkpoint-3") == before
        assert not (output / "checkpoint-6").exists()
        assert not list(output.glob(".checkpoint-*"))


@pytest.mark.slow
def test_non_finite_weights_after_the_last_step_are_not_published(tmp_path, unet_config):
    output = tmp_path / "run"
    args = tiny_training_args(
        output, unet_config, steps=1, learning_rate="1e39", lr_warmup_steps="0", lr_scheduler="constant"
    )
    result = run_script(args)
    assert result.returncode == 3, result.stderr[-3000:]
    message = result.stderr.strip().splitlines()[-1]
    assert "the weights became non-finite by step 1" in message and "nothing was published" in message
    assert not (output / "model_index.json").exists() and not (output / "checkpoint-1").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, unet_config) -> Path:
    output = tmp_path_factory.mktemp("finished") / "run"
    result = run_script(tiny_training_args(output, unet_config, steps=3))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def strict_json(path: Path) -> dict:
    """JSON as the standard has it: NaN and Infinity are refused."""
    return json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{path} holds {name}"))


@pytest.mark.slow
def test_resuming_a_finished_run_republishes_its_losses(tmp_path, unet_config, finished_run):
    output = tmp_path / "run"
    shutil.copytree(finished_run, output)
    result = run_script(tiny_training_args(output, unet_config, steps=3, resume_from_checkpoint="latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is the run's last step: publishing it without training" in result.stderr
    before, after = strict_json(finished_run / "training_summary.json"), strict_json(output / "training_summary.json")
    assert after["global_step"] == 3
    assert (after["final_loss"], after["avg_loss"]) == (before["final_loss"], before["avg_loss"])
    assert f"| Final loss | {before['final_loss']:.4f} |" in (output / "README.md").read_text()


def mismatched_resume(output: Path, unet_config: Path) -> list[str]:
    """A UNet with wider blocks than the checkpoint's."""
    wide = json.loads((unet_config / "config.json").read_text())
    wide["block_out_channels"] = [16, 32]
    (output.parent / "wide").mkdir()
    (output.parent / "wide" / "config.json").write_text(json.dumps(wide))
    return ["--model_config_name_or_path", str(output.parent / "wide")]


@pytest.mark.parametrize(
    "case, expected",
    [
        ("other UNet", "holds a UNet that differs from this run's in block_out_channels; resume with the options"),
        ("EMA off", "was written with EMA weights; continue it with --use_ema"),
        ("checkpoint without EMA", "was written without EMA weights; continue it with --no-use_ema"),
        ("past the end", "is past the run's 2 steps; raise --max_train_steps or --num_epochs"),
    ],
)
@pytest.mark.slow
def test_mismatched_resume_is_refused_before_anything_is_written(tmp_path, unet_config, finished_run, case, expected):
    output = tmp_path / "run"
    shutil.copytree(finished_run, output)
    extra = {"other UNet": mismatched_resume(output, unet_config), "EMA off": ["--no-use_ema"]}.get(case, [])
    if case == "checkpoint without EMA":
        shutil.rmtree(output / "checkpoint-3" / "unet_ema")
    steps = 2 if case == "past the end" else 6
    before = folder_digest(output)
    result = run_script(tiny_training_args(output, unet_config, steps=steps, resume_from_checkpoint="latest") + extra)
    assert result.returncode == 2, result.stderr[-3000:]
    [message] = result.stderr.strip().splitlines()
    assert message.startswith(f"error: --resume_from_checkpoint {output / 'checkpoint-3'} {expected}")
    assert folder_digest(output) == before


@pytest.mark.slow
def test_many_short_train_resume_cycles(tmp_path, unet_config):
    output = tmp_path / "run"
    for steps in (2, 4, 6, 8):
        args = tiny_training_args(
            output, unet_config, steps=steps, checkpointing_steps="2", resume_from_checkpoint="latest"
        )
        result = run_script(args)
        assert result.returncode == 0, result.stderr[-3000:]
        state = json.loads((output / f"checkpoint-{steps}" / checkpoints.STATE_FILE).read_text())
        assert state["global_step"] == steps
    assert [p.name for p in checkpoints.complete_checkpoints(output)] == ["checkpoint-6", "checkpoint-8"]


# ---------------------------------------------------------------- bad input


def _rgb_folder(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    for i in range(20):
        Image.new("RGB", (8, 8), (i * 10, 0, 0)).save(root / "a" / f"{i}.png")
    return root


def _labelled_parquet(root: Path, label: int) -> Path:
    root.mkdir()
    images = [Image.new("L", (8, 8), i) for i in range(20)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    labels = [i % 10 for i in range(19)] + [label]
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
        str(root / "d.parquet")
    )
    return root


BAD_INPUT = {
    "unknown preset": (["--preset", "mnist-huge"], "unknown preset 'mnist-huge'"),
    "missing data dir": (["--train_data_dir", "{tmp}/nowhere"], "does not exist"),
    "empty data dir": (["--train_data_dir", "{empty}"], "holds no images"),
    "wrong channels": (["--train_data_dir", "{rgb}"], "has 3 channel(s) but the model expects 1"),
    "resolution": (
        ["--preset", "mnist-tiny", "--resolution", "30"],
        "not divisible by the UNet's downsampling factor 4",
    ),
    "offline hub id": (["--dataset_name", "ylecun/mnist"], "cannot reach the Hugging Face Hub"),
    "model config is a folder": (
        ["--model_config_name_or_path", "{tmp}/config"],
        "--model_config_name_or_path: cannot read {tmp}/config/config.json (Is a directory)",
    ),
    "saved dataset without data": (["--train_data_dir", "{broken}"], "{broken}"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, capsys, monkeypatch, unet_config):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (tmp_path / "empty").mkdir()
    (tmp_path / "config" / "config.json").mkdir(parents=True)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "dataset_info.json").write_text("{}")
    paths = {"tmp": tmp_path, "empty": tmp_path / "empty", "rgb": _rgb_folder(tmp_path / "rgb")}
    paths["broken"] = tmp_path / "broken"
    argv, expected = BAD_INPUT[case]
    argv, expected = [arg.format(**paths) for arg in argv], expected.format(**paths)
    base = ["--output_dir", str(tmp_path / "out"), "--max_train_steps", "2", "--logger", "none"]
    if "--preset" not in argv:
        base += ["--model_config_name_or_path", str(unet_config), "--resolution", "8", "--train_batch_size", "4"]
    assert training_main([*base, *argv], conditional=False) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "make_data, expected",
    [
        (lambda root: _labelled_parquet(root, label=12), "label 12 is outside the model's classes 0..9"),
        (lambda root: _rgb_folder(root), "conditional training needs a label column"),
    ],
)
def test_bad_labels_for_conditional_training(tmp_path, capsys, unet_config, make_data, expected):
    data_dir = make_data(tmp_path / "data")
    argv = ["--preset", "mnist-tiny", "--train_data_dir", str(data_dir), "--output_dir", str(tmp_path / "out")]
    argv += ["--model_config_name_or_path", str(unet_config), "--resolution", "8", "--train_batch_size", "4"]
    argv += ["--convert_channels", "--logger", "none"]
    assert training_main(argv, conditional=True) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.slow
def test_output_dir_with_another_run_is_left_untouched(tmp_path, unet_config):
    output = tmp_path / "run"
    first = run_script(tiny_training_args(output, unet_config, steps=3))
    assert first.returncode == 0, first.stderr[-3000:]
    before = folder_digest(output)
    second = run_script(tiny_training_args(output, unet_config, steps=3, learning_rate="1e-3"))
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [
        f"error: --output_dir {output} already holds a training run; pass --resume_from_checkpoint latest "
        "to continue it or --overwrite_output_dir to start over"
    ]
    assert folder_digest(output) == before


def test_unreadable_input_is_not_reported_as_a_write_failure(tmp_path, capsys, monkeypatch, unet_config):
    """Setting up reads and writes nothing: an OSError there names what could not be read, exit status 2."""

    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/train")

    monkeypatch.setattr("ddpm_zoo.data.load_image_source", unreadable)
    argv = ["--output_dir", str(tmp_path / "out"), "--max_train_steps", "2", "--logger", "none"]
    argv += ["--model_config_name_or_path", str(unet_config), "--resolution", "8", "--train_batch_size", "4"]
    assert training_main(argv, conditional=False) == 2
    error_lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert error_lines == ["error: cannot read /data/train: Permission denied"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_dir_with_another_model_is_refused_unless_overwritten(tmp_path, unet_config, overwrite):
    """A folder written by save_pretrained (no ddpm-zoo run record) is not replaced silently."""
    output = tmp_path / "model"
    (output / "unet").mkdir(parents=True)
    (output / "unet" / "config.json").write_text("{}")
    (output / "model_index.json").write_text('{"_class_name": "DDPMPipeline"}')
    (output / "README.md").write_text("my model")
    (output / "checkpoint-500").mkdir()  # diffusers' example's checkpoint: not ours to delete
    (output / "checkpoint-500" / "optimizer.bin").write_bytes(b"state")
    before = folder_digest(output)
    args = tiny_training_args(output, unet_config, steps=1) + (["--overwrite_output_dir"] if overwrite else [])
    result = run_script(args)
    if overwrite:
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((output / "model_index.json").read_text())["_class_name"][0] == "pipeline"
        assert (output / "checkpoint-500" / "optimizer.bin").read_bytes() == b"state"
        return
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --output_dir {output} is not empty (README.md, checkpoint-500, model_index.json, ...) and holds no "
        "ddpm-zoo run; choose another folder or pass --overwrite_output_dir to train into it"
    ]
    assert folder_digest(output) == before


@pytest.mark.slow
def test_unknown_option_value_exits_2():
    result = run_script(["--lr_scheduler", "sometimes"])
    assert result.returncode == 2
    assert "invalid choice: 'sometimes'" in result.stderr


@pytest.mark.slow
def test_config_dumps_never_hold_the_token(tmp_path, unet_config):
    output = tmp_path / "run"
    secret = "hf_" + "x" * 30
    args = tiny_training_args(output, unet_config, steps=1, logger="tensorboard")  # the tracker records options
    result = run_script([*args, "--hub_token", secret])
    assert result.returncode == 0, result.stderr[-3000:]
    assert any((output / "logs").rglob("events.out.tfevents.*"))
    for path in output.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert secret not in result.stdout + result.stderr
    assert result.stderr.count("warning: --hub_token sits on the command line") == 1


# ---------------------------------------------------------------- checkpoints: deleting, locking, exact resume


def test_pruning_renames_before_deleting_so_a_kill_midway_leaves_no_checkpoint_without_weights(tmp_path, monkeypatch):
    for step in (3, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
        (tmp_path / f"checkpoint-{step}" / checkpoints.STATE_FILE).write_text("{}")

    def killed_midway(path, ignore_errors=False):
        (Path(path) / "model.safetensors").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.prune_checkpoints(tmp_path, total_limit=1, newest=6)
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-6"]
    monkeypatch.undo()
    (tmp_path / ".checkpoint-9.tmp").mkdir()
    checkpoints.remove_leftovers(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-6"]


def test_a_resume_with_other_processes_batch_or_data_is_refused_unless_allowed(tmp_path, caplog):
    run = {"num_processes": 1, "train_batch_size": 16, "gradient_accumulation_steps": 1, "data": {"images": 5000}}
    (tmp_path / checkpoints.STATE_FILE).write_text(json.dumps({"global_step": 3, "num_processes": 1}))
    checkpoints.check_exact_resume(tmp_path, run, allow_inexact=False)  # older checkpoints lack the other records
    (tmp_path / checkpoints.STATE_FILE).write_text(json.dumps({**run, "num_processes": 2, "data": {"images": 4}}))
    with pytest.raises(UserInputError, match=r"other settings \(num_processes 2 -> 1; data .* --allow_inexact_resume$"):
        checkpoints.check_exact_resume(tmp_path, run, allow_inexact=False)
    checkpoints.check_exact_resume(tmp_path, run, allow_inexact=True)
    assert "resuming" in caplog.text and "num_processes 2 -> 1" in caplog.text


LOCK_HOLDER = """
import fcntl, sys, time
lock = open(sys.argv[1], "a")
fcntl.flock(lock, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


@pytest.mark.slow
def test_a_folder_in_use_is_refused_and_a_killed_runs_lock_does_not_block_its_resume(
    tmp_path, unet_config, finished_run
):
    output = tmp_path / "run"
    shutil.copytree(finished_run, output)
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(output / checkpoints.LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "locked"
    before = folder_digest(output)
    args = tiny_training_args(output, unet_config, steps=3, resume_from_checkpoint="latest")
    refused = run_script(args)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: --output_dir {output} is in use by another training run; wait for it to end or choose another "
        "--output_dir"
    )
    assert folder_digest(output) == before
    holder.kill()  # as SIGKILL ends a run: the OS releases its lock, the lock file stays
    holder.wait()
    resumed = run_script(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]


# Under `accelerate launch` with two processes: rank 1 writes its RNG file late at checkpoint-3 and fails to
# write it at checkpoint-6 (a full disk in one process).
SLOW_THEN_FAILING_RANK = """
import errno, os, sys, time
import torch
from ddpm_zoo.commands.train import main

save = torch.save

def rank_1_save(obj, path, *args, **kwargs):
    if os.environ.get("RANK") == "1" and "random_states" in str(path):
        if ".checkpoint-6.tmp" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        time.sleep(2)
    return save(obj, path, *args, **kwargs)

torch.save = rank_1_save
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_checkpoint_waits_for_every_process_and_a_failing_one_stops_all_cleanly(tmp_path, unet_config):
    driver = tmp_path / "driver.py"
    driver.write_text(SLOW_THEN_FAILING_RANK)
    output = tmp_path / "run"
    args = tiny_training_args(output, unet_config, steps=9, checkpoints_total_limit="5", self_guidance_clusters="0")
    result = launch(str(driver), args, num_processes=2, timeout=400)
    assert result.returncode != 0
    assert "writing checkpoint-6 failed" in result.stderr, result.stderr[-3000:]
    assert sorted(p.name for p in output.glob("*checkpoint-*")) == ["checkpoint-3"]
    assert {"random_states_0.pkl", "random_states_1.pkl"} <= {p.name for p in (output / "checkpoint-3").iterdir()}

    before = folder_digest(output)
    one_process = tiny_training_args(
        output, unet_config, steps=6, resume_from_checkpoint="latest", self_guidance_clusters="0"
    )
    refused = run_script(one_process)
    assert refused.returncode == 2, refused.stderr[-3000:]
    [message] = refused.stderr.strip().splitlines()
    assert message.startswith(f"error: --resume_from_checkpoint {output / 'checkpoint-3'} was written by a run with")
    assert "num_processes 2 -> 1" in message and message.endswith("or pass --allow_inexact_resume")
    assert folder_digest(output) == before
    inexact = run_script([*one_process, "--allow_inexact_resume"])
    assert inexact.returncode == 0, inexact.stderr[-3000:]
    assert (output / "model_index.json").exists()


# ---------------------------------------------------------------- signals


def launcher_processes() -> list[psutil.Process]:
    return [child for child in psutil.Process().children() if "accelerate.commands.launch" in child.cmdline()]


@pytest.mark.slow
@pytest.mark.parametrize("num_processes", [1, 2])
def test_a_signal_to_accelerate_launch_checkpoints_the_next_step_in_every_process(tmp_path, unet_config, num_processes):
    """The loss is read every 100,000 steps: every process must still stop within a step, inside the
    launcher's grace period, with a checkpoint of that step."""
    output = tmp_path / "run"
    args = tiny_training_args(output, unet_config, steps=100_000, logging_steps="100000", checkpointing_steps="100000")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(launch, "train_unconditional.py", args, num_processes=num_processes, timeout=400)
        deadline = time.monotonic() + 300
        while not (output / checkpoints.LOSS_LOG).exists() and not running.done():
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.1)
        time.sleep(5)  # well into the loop
        [launcher] = launcher_processes()
        launcher.send_signal(signal.SIGTERM)
        result = running.result()
    assert result.returncode == 128 + signal.SIGTERM, result.stderr[-3000:]
    [message] = {line for line in result.stderr.splitlines() if line.startswith("error: interrupted at step ")}
    step = int(message.split("interrupted at step ")[1].split(";")[0])
    state = json.loads((output / f"checkpoint-{step}" / checkpoints.STATE_FILE).read_text())
    assert state["global_step"] == step and state["num_processes"] == num_processes
    saved = {p.name for p in (output / f"checkpoint-{step}").iterdir()}
    assert {f"random_states_{rank}.pkl" for rank in range(num_processes)} <= saved


# Sends a signal to its own process when the named function is called (before it runs, or after it returned).
SIGNAL_WHEN_CALLED = """
import importlib, os, sys
from ddpm_zoo.commands.train import main

target, when, number = sys.argv[1], sys.argv[2], int(sys.argv[3])
module_name, path = target.split(":")
owner = importlib.import_module(module_name)
*parents, name = path.split(".")
for parent in parents:
    owner = getattr(owner, parent)
original = getattr(owner, name)

def signalled(*args, **kwargs):
    if when == "before":
        os.kill(os.getpid(), number)
        return original(*args, **kwargs)
    result = original(*args, **kwargs)
    os.kill(os.getpid(), number)
    return result

setattr(owner, name, signalled)
sys.exit(main(sys.argv[4:]))
"""

# phase: (function, signal before or after it runs, signal, options, complete checkpoints left); the loop
# checkpoints every 3 steps of 4, the last checkpoint is written after it.
OUTSIDE_THE_LOOP = {
    "data preparation": ("ddpm_zoo.training:prepare_data", "before", signal.SIGTERM, {}, None),
    "k-means clustering": ("ddpm_zoo.training:cluster_images", "before", signal.SIGINT, {}, None),
    "checkpoint loading": (
        "ddpm_zoo.training:load_checkpoint",
        "before",
        signal.SIGTERM,
        {"resume_from_checkpoint": "latest"},
        ["checkpoint-3"],
    ),
    "the last checkpoint": (
        "ddpm_zoo.checkpoints:complete_checkpoint",
        "before",
        signal.SIGINT,
        {"checkpointing_steps": "100", "self_guidance_clusters": "0"},
        [],
    ),
    "the pipeline folder": (  # an unguided model is published as diffusers' own DDPMPipeline
        "diffusers:DDPMPipeline.save_pretrained",
        "after",
        signal.SIGTERM,
        {"self_guidance_clusters": "0"},
        ["checkpoint-3", "checkpoint-4"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("phase", list(OUTSIDE_THE_LOOP))
def test_a_signal_outside_the_loop_is_one_line_and_leaves_nothing_half_written(
    tmp_path, unet_config, finished_run, phase
):
    target, when, number, options, kept = OUTSIDE_THE_LOOP[phase]
    output = tmp_path / "run"
    if "resume_from_checkpoint" in options:
        shutil.copytree(finished_run, output)
    before = folder_digest(output) if output.exists() else None
    driver = tmp_path / "driver.py"
    driver.write_text(SIGNAL_WHEN_CALLED)
    args = tiny_training_args(output, unet_config, steps=4, **options)
    result = run_script([target, when, str(number.value), *args], script=str(driver))
    assert result.returncode == 128 + number, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith(f"error: interrupted by {number.name}; nothing half-written was left; ")
    if kept is None:
        assert not output.exists()
        return
    assert [p.name for p in checkpoints.complete_checkpoints(output)] == kept
    where = f"the last complete checkpoint is {output / kept[-1]}" if kept else "no checkpoint was completed"
    assert errors[0].endswith(where)
    if before is not None:
        assert folder_digest(output) == before
    else:
        assert not list(output.glob(".*tmp*")) and not (output / "model_index.json").exists()

"""Training checkpoints that are complete or absent: written to a hidden folder, renamed into place.

A checkpoint folder `checkpoint-<step>` holds Accelerate's state (model as safetensors, optimizer,
learning-rate schedule, RNG states), the EMA weights as safetensors in `unet_ema/`, the autoguidance
guide in `unet_guide/` once it has been taken, and, written last, `training_state.json` (step, training
seconds, loss so far, the UNet's config, what an exact resume needs). Only folders with that file count as
checkpoints. Folders are deleted by renaming them `.deleting-...` first, so a kill midway never leaves a
checkpoint without its weights; the next run removes such leftovers and half-written staging folders.

A run holds a lock on its output folder (`.ddpm_zoo.lock`, `flock`, released by the OS when the process
ends however it ends), so two runs never train into one folder at once.

The run's loss log `loss.csv` goes on across a resume: rows written after the checkpoint a run resumes
from are dropped, so the log holds one row per logging step of the run's one history.
"""

import csv
import dataclasses
import fcntl
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from ddpm_zoo.errors import UserInputError

RUN_RECORD = "ddpm_zoo_run.json"
STATE_FILE = "training_state.json"
GUIDE_FOLDER = "unet_guide"
CHECKPOINT_PREFIX = "checkpoint-"
ABANDONED_PREFIX = "abandoned-"
DELETING_PREFIX = ".deleting-"
LOCK_FILE = ".ddpm_zoo.lock"
# What a resume must share with the run that wrote the checkpoint to continue it exactly.
EXACT_RESUME_KEYS = ("num_processes", "train_batch_size", "gradient_accumulation_steps", "data")
EMA_FOLDER = "unet_ema"
LOSS_LOG = "loss.csv"
LOSS_COLUMNS = ("step", "loss", "lr", "ema_decay", "wall_seconds")

logger = logging.getLogger("ddpm_zoo")


@dataclass
class TrainingProgress:
    """Where a run stands, as its checkpoints record it beside the weights."""

    global_step: int = 0
    train_seconds: float = 0.0
    loss_last: float | None = None
    loss_total: float = 0.0
    loss_count: int = 0


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, permissions); nothing half-written remains."""


def checkpoint_step(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints that finished writing (they hold STATE_FILE), oldest first."""
    found = [
        path
        for path in output_dir.glob(f"{CHECKPOINT_PREFIX}*")
        if path.is_dir() and path.name[len(CHECKPOINT_PREFIX) :].isdigit() and (path / STATE_FILE).exists()
    ]
    return sorted(found, key=checkpoint_step)


def resolve_resume_path(resume_from_checkpoint: str | None, output_dir: Path) -> Path | None:
    """`latest` is the newest complete checkpoint (None when there is none); a path must be complete."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = complete_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_absolute() and not path.exists():
        path = output_dir / path
    if not (path / STATE_FILE).exists():
        raise UserInputError(f"--resume_from_checkpoint {resume_from_checkpoint}: not a complete checkpoint")
    return path


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool, resume: Path | None) -> None:
    """Train only into a new or empty folder, a folder with a checkpoint to resume, a run of ours that
    saved no checkpoint and no pipeline, or any folder with `overwrite`; anything else, such as a finished
    run or another program's model, is refused before anything is written."""
    if overwrite or resume is not None or not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise UserInputError(f"--output_dir {output_dir} is a file, not a folder")
    if (output_dir / RUN_RECORD).exists():
        if resuming or not (complete_checkpoints(output_dir) or (output_dir / "model_index.json").exists()):
            return  # continuing it, or a run that stopped before saving anything (e.g. on a corrupt image)
        raise UserInputError(
            f"--output_dir {output_dir} already holds a training run; pass --resume_from_checkpoint latest to "
            "continue it or --overwrite_output_dir to start over"
        )
    found = sorted(path.name for path in output_dir.iterdir() if path.name != LOCK_FILE)
    if found:
        raise UserInputError(
            f"--output_dir {output_dir} is not empty ({', '.join(found[:3])}{', ...' if len(found) > 3 else ''}) "
            "and holds no ddpm-zoo run; choose another folder or pass --overwrite_output_dir to train into it"
        )


def as_json(value: Any) -> Any:
    """`value` as JSON reads it back (tuples become lists), so configs from a preset, a file or a checkpoint
    compare equal."""
    return json.loads(json.dumps(value, sort_keys=True))


def unet_config_record(unet: UNet2DModel) -> dict:
    """The UNet's config as JSON stores it (lists, no private keys), for comparing a checkpoint with a run."""
    return as_json({key: value for key, value in unet.config.items() if not key.startswith("_")})


def read_state(path: Path) -> dict:
    """A checkpoint's `training_state.json`; an unreadable one is a clear error."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as error:
        raise UserInputError(f"{path / STATE_FILE} cannot be read ({error}); resume from another checkpoint") from None
    if not isinstance(state, dict):
        raise UserInputError(f"{path / STATE_FILE} holds no training state; resume from another checkpoint")
    return state


def read_progress(path: Path) -> TrainingProgress:
    """The progress a checkpoint recorded (older checkpoints lack the loss fields)."""
    state = read_state(path)
    fields = {field.name for field in dataclasses.fields(TrainingProgress)}
    return TrainingProgress(**{key: value for key, value in state.items() if key in fields})


def check_resumable(path: Path, unet: UNet2DModel, use_ema: bool) -> None:
    """Refuse a checkpoint this run cannot continue, before anything is written: another UNet (checkpoints
    record its config) or EMA weights missing under --use_ema / present under --no-use_ema."""
    recorded = read_state(path).get("unet_config")
    current = unet_config_record(unet)
    # Keys the record lacks are options a newer diffusers added with their defaults: not a difference.
    keys = sorted(key for key in recorded or {} if recorded[key] != current.get(key))
    if keys:
        raise UserInputError(
            f"--resume_from_checkpoint {path} holds a UNet that differs from this run's in {', '.join(keys)}; "
            "resume with the options it was trained with (--preset, --model_config_name_or_path, --resolution, "
            "data classes)"
        )
    has_ema = (path / EMA_FOLDER).is_dir()
    if has_ema != use_ema:
        written = "with" if has_ema else "without"
        raise UserInputError(
            f"--resume_from_checkpoint {path} was written {written} EMA weights; continue it with "
            f"{'--use_ema' if has_ema else '--no-use_ema'}"
        )


def check_exact_resume(path: Path, run: dict, allow_inexact: bool) -> None:
    """Refuse, unless `allow_inexact`, a checkpoint whose run had another process count, batch size,
    accumulation or data than `run` (EXACT_RESUME_KEYS): it would go on with another data order. Older
    checkpoints lack some of these records and are not checked on those."""
    recorded = read_state(path)
    changed = [
        f"{key} {json.dumps(recorded[key])} -> {json.dumps(run[key])}"
        for key in EXACT_RESUME_KEYS
        if key in recorded and as_json(recorded[key]) != as_json(run[key])
    ]
    if not changed:
        return
    if not allow_inexact:
        raise UserInputError(
            f"--resume_from_checkpoint {path} was written by a run with other settings ({'; '.join(changed)}), so "
            "it would not continue exactly; resume with the same processes, --train_batch_size, "
            "--gradient_accumulation_steps and data, or pass --allow_inexact_resume"
        )
    logger.warning("resuming %s inexactly, with other settings: %s", path, "; ".join(changed))


def lock_output_dir(output_dir: Path) -> IO[str]:
    """Create `output_dir` and lock it for this process until the returned file is closed or the process
    ends (the OS then releases it, so a killed run never blocks its resume); a folder that another run
    holds is refused."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = (output_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UserInputError(
            f"--output_dir {output_dir} is in use by another training run; wait for it to end or choose another "
            "--output_dir"
        ) from None
    return lock


def write_atomically(path: Path, text: str) -> None:
    """Write `path` through a hidden sibling renamed over it: readers see the old text or the new, whole."""
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    staging.replace(path)


def claim_output_dir(accelerator: Accelerator, output_dir: Path) -> IO[str] | None:
    """The main process locks `output_dir` (other processes get None); when another run holds it, every
    process raises the same error, so none waits for a main process that gave up."""
    lock, refusal = None, [None]
    if accelerator.is_main_process:
        try:
            lock = lock_output_dir(output_dir)
        except UserInputError as error:
            refusal = [str(error)]
    broadcast_object_list(refusal, from_process=0)
    if refusal[0] is not None:
        raise UserInputError(refusal[0])
    return lock


def failed_anywhere(accelerator: Accelerator, failed: bool) -> bool:
    """Whether any process failed: a collective every process calls, so it also waits for all of them."""
    if accelerator.num_processes == 1:
        return failed
    flag = torch.tensor([float(failed)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item())


def attempt(write: Callable[[], object]) -> Exception | None:
    """Run `write`; the error it raised, or None (safetensors and torch.save report a full disk as their own
    errors)."""
    try:
        write()
    except Exception as error:
        return error
    return None


def save_checkpoint(
    accelerator: Accelerator,
    ema: EMAModel | None,
    output_dir: Path,
    progress: TrainingProgress,
    total_limit: int | None,
    record: dict,
    guide: UNet2DModel | None = None,
) -> Path:
    """Every process writes its part into `.checkpoint-<step>.tmp`; once all of them have, the main process
    adds the EMA and the state file (progress, process count, and `record`: UNet config, what an exact
    resume needs), renames the folder into place and prunes to `total_limit`. The processes agree on the
    outcome, so a write that fails in one of them stops all of them with nothing half-written."""
    step = progress.global_step
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    staging = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    state = {**dataclasses.asdict(progress), "num_processes": accelerator.num_processes, **record}
    try:
        error = attempt(lambda: accelerator.save_state(str(staging)))
        if not failed_anywhere(accelerator, error is not None) and accelerator.is_main_process:
            error = attempt(lambda: complete_checkpoint(staging, final, ema, guide, state, total_limit))
        if failed_anywhere(accelerator, error is not None):
            reason = error or "in another process"
            raise CheckpointWriteError(f"writing {final.name} failed ({reason})") from error
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def complete_checkpoint(
    staging: Path, final: Path, ema: EMAModel | None, guide: UNet2DModel | None, state: dict, total_limit: int | None
) -> None:
    """Add the main process's files to the staging folder, rename it into place (the state file last,
    so the folder counts only once whole) and prune."""
    if ema is not None:
        ema.save_pretrained(str(staging / EMA_FOLDER))
    if guide is not None:
        guide.save_pretrained(str(staging / GUIDE_FOLDER))
    (staging / STATE_FILE).write_text(json.dumps(state, allow_nan=False))
    if final.exists():  # a checkpoint of the same step from a branch left by resuming from an older one
        set_aside(final)
    staging.rename(final)
    prune_checkpoints(final.parent, total_limit, newest=state["global_step"])


def set_aside(abandoned: Path) -> None:
    """Rename a checkpoint of an abandoned branch `abandoned-checkpoint-<step>` (`-2`, `-3`... when taken)."""
    target = abandoned.with_name(f"{ABANDONED_PREFIX}{abandoned.name}")
    copies = 1
    while target.exists():
        copies += 1
        target = abandoned.with_name(f"{ABANDONED_PREFIX}{abandoned.name}-{copies}")
    logger.warning("training went on from an older checkpoint: %s kept as %s", abandoned.name, target.name)
    abandoned.rename(target)


def prune_checkpoints(output_dir: Path, total_limit: int | None, newest: int) -> None:
    """Called after checkpoint `newest` was written: it is the newest, so never deleted.

    Complete checkpoints above it belong to a branch that was abandoned by resuming from an older one;
    they are renamed `abandoned-checkpoint-<step>` (logged, never deleted), so `--resume_from_checkpoint
    latest` can never jump back onto that branch. Then the newest `total_limit` (>= 1) of the rest are kept.
    """
    checkpoints = complete_checkpoints(output_dir)
    for abandoned in (path for path in checkpoints if checkpoint_step(path) > newest):
        set_aside(abandoned)
    kept = [path for path in checkpoints if checkpoint_step(path) <= newest]
    if total_limit is not None:
        for old in kept[: max(0, len(kept) - max(total_limit, 1))]:
            remove_checkpoint(old)


def remove_checkpoint(path: Path) -> None:
    """Rename, then delete: a kill midway leaves a hidden `.deleting-` folder, never a checkpoint that still
    counts as complete without its weights."""
    doomed = path.with_name(f"{DELETING_PREFIX}{path.name}")
    if doomed.exists():
        shutil.rmtree(doomed)
    path.rename(doomed)
    shutil.rmtree(doomed)


def remove_leftovers(output_dir: Path) -> None:
    """Delete what an interrupted run left: folders half-deleted or half-written."""
    for leftover in [*output_dir.glob(f"{DELETING_PREFIX}*"), *output_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp")]:
        shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(accelerator: Accelerator, ema: EMAModel | None, path: Path) -> TrainingProgress:
    """Restore model, optimizer, schedule, RNG and EMA state; return the checkpoint's progress."""
    accelerator.load_state(str(path))
    if ema is not None:
        loaded = EMAModel.from_pretrained(str(path / EMA_FOLDER), model_cls=ema.model_cls, foreach=True)
        ema.load_state_dict(loaded.state_dict())
        ema.to(accelerator.device)
    return read_progress(path)


def load_guide(path: Path) -> UNet2DModel | None:
    """The autoguidance guide a checkpoint holds, or None when it was written before the guide was taken."""
    return UNet2DModel.from_pretrained(str(path / GUIDE_FOLDER)) if (path / GUIDE_FOLDER).is_dir() else None


def start_loss_log(output_dir: Path, step: int) -> Path:
    """The loss log a run continues from `step`: earlier rows kept, later ones (and a torn last line) dropped,
    rewritten atomically; a run starting from step 0 gets a log holding only the header."""
    path = output_dir / LOSS_LOG
    rows = []
    if path.exists():
        with path.open(newline="") as file:
            rows = [
                row
                for row in csv.DictReader(file)
                if None not in row.values() and row["step"].isdigit() and int(row["step"]) <= step
            ]
    staging = path.with_name(f".{LOSS_LOG}.tmp")
    with staging.open("w", newline="") as file:
        writer = csv.DictWriter(file, LOSS_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    staging.replace(path)
    return path


def append_loss_row(path: Path, step: int, loss: float, lr: float, ema_decay: float | None, seconds: float) -> None:
    """One row of the loss log: the step, its loss, learning rate, EMA decay (empty without EMA) and the
    training seconds so far."""
    with path.open("a", newline="") as file:
        csv.writer(file).writerow([step, loss, lr, "" if ema_decay is None else ema_decay, f"{seconds:.3f}"])

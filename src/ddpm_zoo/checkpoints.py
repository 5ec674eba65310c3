"""Training checkpoints that are complete or absent: written to a hidden folder, renamed into place.

A checkpoint folder `checkpoint-<step>` holds Accelerate's state (model as safetensors, optimizer,
learning-rate schedule, RNG states), the EMA weights as safetensors in `unet_ema/`, the autoguidance
guide in `unet_guide/` once it has been taken, and, written last, `training_state.json`. Only folders
with that file count as checkpoints.
"""

import json
import shutil
from pathlib import Path

from accelerate import Accelerator
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel

from ddpm_zoo.errors import UserInputError

RUN_RECORD = "ddpm_zoo_run.json"
STATE_FILE = "training_state.json"
GUIDE_FOLDER = "unet_guide"
CHECKPOINT_PREFIX = "checkpoint-"


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


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to train into a folder that holds a different run unless asked to overwrite or resume."""
    if not (output_dir / RUN_RECORD).exists() or overwrite or resuming:
        return
    raise UserInputError(
        f"--output_dir {output_dir} already holds a training run; pass --resume_from_checkpoint latest to "
        "continue it or --overwrite_output_dir to start over"
    )


def save_checkpoint(
    accelerator: Accelerator,
    ema: EMAModel | None,
    output_dir: Path,
    step: int,
    total_limit: int | None,
    train_seconds: float = 0.0,
    guide: UNet2DModel | None = None,
) -> Path:
    """Every process writes its part into `.checkpoint-<step>.tmp`; the main process then adds the EMA
    and the state file (step, training seconds so far) and renames the folder into place, then prunes
    to `total_limit`."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    staging = output_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:
            if ema is not None:
                ema.save_pretrained(str(staging / "unet_ema"))
            if guide is not None:
                guide.save_pretrained(str(staging / GUIDE_FOLDER))
            state = {"global_step": step, "num_processes": accelerator.num_processes, "train_seconds": train_seconds}
            (staging / STATE_FILE).write_text(json.dumps(state))
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
            prune_checkpoints(output_dir, total_limit)
    except Exception as error:  # safetensors and torch.save report a full disk as their own errors
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointWriteError(f"writing {final.name} failed ({error})") from error
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, total_limit: int | None) -> None:
    """Keep the newest `total_limit` (>= 1) complete checkpoints, so the newest is never deleted."""
    checkpoints = complete_checkpoints(output_dir)
    if total_limit is not None:
        for old in checkpoints[: max(0, len(checkpoints) - max(total_limit, 1))]:
            shutil.rmtree(old)


def load_checkpoint(accelerator: Accelerator, ema: EMAModel | None, path: Path) -> tuple[int, float]:
    """Restore model, optimizer, schedule, RNG and EMA state; return the checkpoint's step and training
    seconds so far."""
    accelerator.load_state(str(path))
    if ema is not None:
        loaded = EMAModel.from_pretrained(str(path / "unet_ema"), model_cls=UNet2DModel, foreach=True)
        ema.load_state_dict(loaded.state_dict())
        ema.to(accelerator.device)
    state = json.loads((path / STATE_FILE).read_text())
    return int(state["global_step"]), float(state.get("train_seconds", 0.0))


def load_guide(path: Path) -> UNet2DModel | None:
    """The autoguidance guide a checkpoint holds, or None when it was written before the guide was taken."""
    return UNet2DModel.from_pretrained(str(path / GUIDE_FOLDER)) if (path / GUIDE_FOLDER).is_dir() else None

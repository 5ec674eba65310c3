"""A pipeline folder or Hub repo id -> a pipeline on a device, without running downloaded code."""

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from ddpm_zoo import hub
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.schedulers import make_scheduler


def default_device() -> str:
    """The fastest device here: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def load_pipeline(
    model: str, device: str | None = None, scheduler: str | None = None, trust_remote_code: bool = False
) -> DiffusionPipeline:
    """Load a pipeline folder or Hub repo, optionally swap in scheduler `scheduler` (same noise schedule, via
    `from_config`), and move it to `device`.

    A Hub repo is one snapshot (from the local cache when offline). ddpm-zoo pipelines load into the
    installed classes and diffusers' own pipelines load as usual, so no downloaded code runs; a folder
    whose `model_index.json` names other custom code needs `trust_remote_code`. Only safetensors weights
    are read: pickle weights (`.bin`, `.pt`) are refused, since unpickling can run arbitrary code."""
    path = Path(model).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        raise UserInputError(f"{model} is not a pipeline folder (it has no model_index.json)")
    if not path.exists() and (model.startswith((".", "/", "~")) or model.count("/") > 1):
        raise UserInputError(f"no such model folder: {model}")
    folder = hub.download_pipeline(str(path) if path.exists() else model)
    class_name = hub.read_model_index(folder).get("_class_name")
    custom_code = isinstance(class_name, list)
    class_name = class_name[-1] if custom_code else class_name
    try:
        if class_name in hub.PIPELINE_CLASSES:
            pipeline = hub.load_pipeline(str(folder))
        elif custom_code and not trust_remote_code:
            raise UserInputError(
                f"{model} holds custom pipeline code ({class_name}); read it, then pass --trust_remote_code to run it"
            )
        else:
            pipeline = DiffusionPipeline.from_pretrained(
                folder, trust_remote_code=trust_remote_code, use_safetensors=True
            )
    except (OSError, ValueError, ImportError, AttributeError, KeyError, TypeError) as error:
        where = "folder" if path.exists() else "Hub repo"
        raise UserInputError(f"cannot load the {where} {model!r}: {_one_line(error)}") from None
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler.config)
    pipeline.to(device or default_device())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _one_line(error: Exception) -> str:
    """The first line of an error message, without diffusers' pointer to a traceback we do not show."""
    return hub.first_line(error).split(" Please check out the root cause")[0]

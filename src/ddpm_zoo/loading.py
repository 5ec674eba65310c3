"""The one loader: a pipeline folder or Hub repo id -> a pipeline on a device, without running downloaded code."""

import json
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline, ModelMixin
from diffusers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFETENSORS_WEIGHTS_NAME, _add_variant

from ddpm_zoo.checkpoints import STATE_FILE
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.hub import DOWNLOAD_OPTIONS, PICKLE_SUFFIXES, download_pipeline, first_line
from ddpm_zoo.models import PointDenoiser
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, PointDiffusionPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.schedulers import make_scheduler

PIPELINE_CLASSES = {
    cls.__name__: cls for cls in (UnconditionalDDPMPipeline, ClassConditionalDDPMPipeline, PointDiffusionPipeline)
}
# ddpm-zoo's own networks: a saved folder names each as [file, class] beside a copy of its file, which plain
# diffusers runs with trust_remote_code; the installed class loads the weights instead.
INSTALLED_MODELS = {cls.__name__: cls for cls in (PointDenoiser,)}
MODEL_OPTIONS = ("torch_dtype", "variant")
# diffusers' DDPMPipeline folders (as ddpm-zoo publishes an unguided model) load into the installed class that
# extends it: the same weights and scheduler, plus the x_0 bound for any scheduler and the step callback.
PIPELINE_CLASSES["DDPMPipeline"] = UnconditionalDDPMPipeline


def default_device() -> str:
    """The fastest device here: CUDA, then Apple MPS, then CPU."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def is_component_entry(value) -> bool:
    """A model_index.json entry naming a component ([library, class] or [null, null] when left out), as
    opposed to a pipeline config value such as a list of cluster sizes."""
    return isinstance(value, list) and len(value) == 2 and all(item is None or isinstance(item, str) for item in value)


def pipeline_components(index: dict) -> list[str]:
    """The component folders a `model_index.json` names (`unet`, `scheduler`, ...)."""
    return [name for name, value in index.items() if not name.startswith("_") and is_component_entry(value)]


def read_model_index(folder: Path) -> dict:
    index_path = folder / "model_index.json"
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder")
    if not index_path.is_file():
        raise UserInputError(
            f"{folder} has no model_index.json, so it is not a saved pipeline folder "
            "(training writes one to --output_dir; save_pipeline_folder writes one too)"
        )
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserInputError(f"{index_path} is not UTF-8 text: {error}") from None
    except json.JSONDecodeError as error:
        raise UserInputError(f"{index_path} is not valid JSON: {error}") from None
    except RecursionError:
        raise UserInputError(f"{index_path} nests too deeply to be a pipeline index") from None
    if not isinstance(index, dict):
        raise UserInputError(f"{index_path} holds a JSON {type(index).__name__}, not a pipeline index")
    check_class_name(index.get("_class_name"), index_path)
    return index


def check_class_name(class_name: object, index_path: Path) -> None:
    """`_class_name` is a class name, or [module, class name] for a pipeline with its own code (or absent)."""
    names = class_name if isinstance(class_name, list) and len(class_name) == 2 else [class_name]
    if class_name is not None and not all(isinstance(name, str) and name for name in names):
        raise UserInputError(
            f"{index_path}: _class_name must be a class name or [module, class name], not {json.dumps(class_name)[:80]}"
        )


def safetensors_names(variant: str | None = None) -> tuple[str, str]:
    """The safetensors weights file and shard index diffusers reads (of `variant`, e.g. fp16, where given)."""
    return _add_variant(SAFETENSORS_WEIGHTS_NAME, variant), _add_variant(SAFE_WEIGHTS_INDEX_NAME, variant)


def check_weights(folder: Path, component: str, variant: str | None = None) -> None:
    """Refuse a component whose weights exist only as pickles: loading a pickle can run arbitrary code. A
    safetensors file counts only under the name diffusers reads, so a decoy beside a pickle is no cover."""
    files = [p for p in (folder / component).glob("*") if p.is_file()]
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not any(p.name in safetensors_names(variant) for p in files):
        raise UserInputError(
            f"{folder / component} holds only pickle weights ({', '.join(sorted(pickles))}); ddpm-zoo publishes "
            "safetensors only, since loading a pickle can run arbitrary code: re-save the pipeline with "
            "save_pretrained(..., safe_serialization=True) or ddpm_zoo.publish.save_pipeline_folder"
        )


def check_safetensors(folder: Path, component: str, variant: str | None = None) -> None:
    """A model component needs its weights in the safetensors file diffusers reads (or that file's index)."""
    weights, index = safetensors_names(variant)
    if not any((folder / component / name).is_file() for name in (weights, index)):
        raise UserInputError(f"{folder / component} has no {weights}, the weights file diffusers reads")


def check_components(folder: Path, index: dict, name: str, variant: str | None = None) -> None:
    """Every component of a ddpm-zoo folder is a diffusers class, and its model weights are safetensors."""
    for key in pipeline_components(index):
        library, class_name = index[key]
        if library is None:  # an optional component left out (e.g. no autoguidance guide_unet)
            continue
        component = component_class(library, class_name, name, key)
        check_weights(folder, key, variant)
        if issubclass(component, ModelMixin):
            check_safetensors(folder, key, variant)


def component_class(library: str, class_name: str, name: str, key: str) -> type:
    """The installed class a component entry names: diffusers' own, or one of ddpm-zoo's networks."""
    if library == "diffusers":
        return getattr(diffusers, class_name)
    if class_name in INSTALLED_MODELS:
        return INSTALLED_MODELS[class_name]
    raise UserInputError(f"{name}: component {key} comes from {library}, not diffusers")


def load_installed(folder: Path, index: dict, name: str, **kwargs) -> DiffusionPipeline:
    """A ddpm-zoo pipeline folder loaded into the installed class its index names, through that class's own
    `from_pretrained` (which runs none of the folder's code), safetensors only; `kwargs` go to it."""
    check_components(folder, index, name, kwargs.get("variant"))
    class_name = index["_class_name"]
    class_name = class_name[-1] if isinstance(class_name, list) else class_name
    if any(index[key][0] not in (None, "diffusers") for key in pipeline_components(index)):
        return load_by_component(folder, index, PIPELINE_CLASSES[class_name], **kwargs)
    return PIPELINE_CLASSES[class_name].from_pretrained(folder, use_safetensors=True, **kwargs)


def load_by_component(folder: Path, index: dict, pipeline_class: type, **kwargs) -> DiffusionPipeline:
    """A folder with one of ddpm-zoo's own networks, built component by component from the installed classes
    (diffusers' `from_pretrained` would run the folder's copy of the network's file); `torch_dtype` and
    `variant` go to the models."""
    options = {key: value for key, value in kwargs.items() if key in MODEL_OPTIONS}
    parts = {key: value for key, value in index.items() if not key.startswith("_") and not is_component_entry(value)}
    for key in pipeline_components(index):
        library, class_name = index[key]
        if library is None:
            parts[key] = None
            continue
        component = component_class(library, class_name, str(folder), key)
        is_model = issubclass(component, ModelMixin)
        loaded = component.from_pretrained(folder / key, **({"use_safetensors": True, **options} if is_model else {}))
        parts[key] = loaded
    return pipeline_class(**parts)


def load_pipeline(
    name_or_path: str,
    device: str | None = None,
    scheduler: str | None = None,
    trust_remote_code: bool = False,
    revision: str | None = None,
    token: str | None = None,
    **kwargs,
) -> DiffusionPipeline:
    """Load a pipeline folder or Hub repo (at `revision`), optionally swap in scheduler `scheduler` (same noise
    schedule, via `from_config`), and move it to `device` (default: the fastest here).

    A Hub repo is one snapshot (from the local cache when offline). ddpm-zoo pipelines load into the
    installed classes and diffusers' own pipelines load as usual, so no downloaded code runs; a folder
    whose `model_index.json` names other custom code needs `trust_remote_code`. Only safetensors weights
    are read: pickle weights (`.bin`, `.pt`) are refused, since unpickling can run arbitrary code.
    (`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` runs a repo's pipeline.py instead.)

    Other keyword arguments are diffusers' `from_pretrained` arguments (`torch_dtype`, `variant`, ...); the
    download ones (`local_files_only`, `cache_dir`, `force_download`, `proxies`) apply to the snapshot."""
    path = Path(name_or_path).expanduser()
    if path.exists() and not (path / "model_index.json").is_file():
        hint = checkpoint_hint(path)
        raise UserInputError(f"{name_or_path} is not a pipeline folder (it has no model_index.json){hint}")
    if not path.exists() and (name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1):
        raise UserInputError(f"no such model folder: {name_or_path}")
    download = {key: kwargs.pop(key) for key in DOWNLOAD_OPTIONS if key in kwargs}
    folder = download_pipeline(str(path) if path.exists() else name_or_path, revision, token, **download)
    index = read_model_index(folder)
    class_name = index.get("_class_name")
    custom_code = isinstance(class_name, list)
    class_name = class_name[-1] if custom_code else class_name
    try:
        if class_name in PIPELINE_CLASSES:
            pipeline = load_installed(folder, index, name_or_path, **kwargs)
        elif custom_code and not trust_remote_code:
            raise UserInputError(
                f"{name_or_path} holds custom pipeline code ({class_name}); read it, then pass --trust_remote_code "
                "to run it"
            )
        else:
            pipeline = DiffusionPipeline.from_pretrained(
                folder, trust_remote_code=trust_remote_code, use_safetensors=True, **kwargs
            )
    except (OSError, ValueError, ImportError, AttributeError, KeyError, TypeError, RecursionError) as error:
        where = "folder" if path.exists() else "Hub repo"
        raise UserInputError(f"cannot load the {where} {name_or_path!r}: {_one_line(error)}") from None
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler.config)
    pipeline.to(device or default_device())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def checkpoint_hint(path: Path) -> str:
    """For a training checkpoint given as a pipeline: how to make one of it."""
    if (path / STATE_FILE).is_file():
        return f"; it is a training checkpoint: write its pipeline folder with `ddpm-zoo export {path}`"
    return ""


def _one_line(error: Exception) -> str:
    """The first line of an error message, without diffusers' pointer to a traceback we do not show."""
    return first_line(error).split(" Please check out the root cause")[0]

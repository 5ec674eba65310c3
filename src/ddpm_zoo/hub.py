"""Publishable pipeline folders: save (weights, pipeline.py, model_index.json, samples), push and pull."""

import json
import os
import shutil
import tempfile
from pathlib import Path

from diffusers import DiffusionPipeline

from ddpm_zoo.pipelines import PIPELINE_SOURCE_FILE

CUSTOM_PIPELINE_MODULE = "pipeline"
PIPELINE_FILES = (
    "model_index.json",
    f"{CUSTOM_PIPELINE_MODULE}.py",
    "unet",
    "scheduler",
    "README.md",
    "samples",
)


def save_pipeline_folder(
    pipeline: DiffusionPipeline, output_dir: str | os.PathLike, extra_files: dict | None = None
) -> Path:
    """Write `pipeline` to `output_dir` so plain diffusers can load it with `trust_remote_code=True`.

    The folder gets safetensors weights, `pipeline.py` (a verbatim copy of ddpm-zoo's pipeline file)
    and a `model_index.json` whose `_class_name` is `["pipeline", "<Class>"]`. Everything is first
    written to a temporary sibling folder and then moved into place entry by entry, `model_index.json`
    last, so an interrupted save never leaves a half-written model behind a valid index.
    `extra_files` maps relative paths to bytes (e.g. the model card, sample grids).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pipeline-tmp-", dir=output_dir))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        shutil.copyfile(PIPELINE_SOURCE_FILE, staging / f"{CUSTOM_PIPELINE_MODULE}.py")
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [CUSTOM_PIPELINE_MODULE, type(pipeline).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for relative, content in (extra_files or {}).items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        entries = sorted((p for p in staging.iterdir()), key=lambda p: p.name == "model_index.json")
        for entry in entries:
            destination = output_dir / entry.name
            if destination.is_dir() and not destination.is_symlink():
                old = output_dir / f".old-{entry.name}-{os.getpid()}"
                destination.rename(old)
                entry.rename(destination)
                shutil.rmtree(old)
            else:
                os.replace(entry, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir

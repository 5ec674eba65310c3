"""Generating images from a loaded pipeline: the one sampling loop of `ddpm-zoo sample`, `visualize`,
`evaluate` and the benchmarks, its default step counts, and the checks on what it is asked for.

Image i of a run is drawn with its own CPU generator seeded `seed + i`, so it depends on the seed and its
index only: not on the batch size, nor on which images are drawn with it.
"""

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from ddpm_zoo.errors import UserInputError
from ddpm_zoo.introspection import (
    has_named_classes,
    num_train_timesteps,
    supports_step_callback,
    takes_color_labels,
    takes_guidance,
)
from ddpm_zoo.schedulers import scheduler_name
from ddpm_zoo.visualize import sample_grid

# The step counts each sampler is usually run at (and is tested at against closed forms); capped at the
# model's training timesteps T. A scheduler not named here gets FALLBACK_STEPS.
DEFAULT_STEPS = {
    "ddpm": 1000,
    "ddim": 50,
    "dpmsolver": 20,
    "dpmsolver-sde": 20,
    "dpmsolver-singlestep": 20,
    "unipc": 20,
    "deis": 20,
    "euler": 50,
    "euler-ancestral": 50,
    "heun": 25,
    "lms": 50,
    "pndm": 50,
}
FALLBACK_STEPS = 50


def default_steps(pipeline: DiffusionPipeline) -> int:
    """The usual number of steps for the pipeline's scheduler (DDPM 1000, the others 20-50), at most T."""
    usual = DEFAULT_STEPS.get(scheduler_name(pipeline.scheduler) or "", FALLBACK_STEPS)
    return min(usual, num_train_timesteps(pipeline))


def check_positive(**values: int | float | None) -> None:
    """Each named value must be >= 1 (None is allowed: it means a default)."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserInputError(f"--{name} must be at least 1, got {value}")


def check_step_count(pipeline: DiffusionPipeline, num_steps: int, option: str = "--num_inference_steps") -> None:
    """A sampler takes at most T steps: one per timestep of the training schedule."""
    limit = num_train_timesteps(pipeline)
    if num_steps > limit:
        raise UserInputError(
            f"{option} {num_steps} is more than this model's {limit} training timesteps; use at most {limit}"
        )


def check_guidance(
    pipeline: DiffusionPipeline, guidance_scale: float | None, color_guidance_scale: float | None = None
) -> None:
    """A guidance weight needs a model that takes one; a color's, a model conditioned on a color."""
    if guidance_scale is not None and not takes_guidance(pipeline):
        raise UserInputError(
            "this model is unconditional without guidance; --guidance_scale needs a class-conditional, an "
            "autoguided (guide_unet) or a self-guided (cluster_sizes) one"
        )
    if color_guidance_scale is not None and not takes_color_labels(pipeline):
        raise UserInputError("--color_guidance_scale needs a model conditioned on digit and color")


FREE = -1  # the index of a label left free (sampled by the other label, or unconditionally)
FREE_NAME = "any"  # how the command line names a label left free


def image_labels(
    pipeline: DiffusionPipeline,
    num_images: int | None,
    class_labels: Sequence[int | str] | None,
    color_labels: Sequence[int | str] | None = None,
) -> tuple[list[int], list[int] | None] | tuple[None, None]:
    """Class and color index of each image: `class_labels` and `color_labels` (indices, names, or "any" for a
    label left free) each repeated to `num_images`, by default to the longer list's length (classes default
    to every class once). Colors are None for a model without them; (None, None) for an unconditional
    pipeline, where labels are an error."""
    if not has_named_classes(pipeline):
        if class_labels or color_labels:
            raise UserInputError("this model is unconditional; --class_labels needs a class-conditional one")
        return None, None
    num_colors = getattr(pipeline, "num_colors", 0)
    if color_labels and not num_colors:
        raise UserInputError("this model is conditioned on the class alone; --color_labels needs one with colors")
    try:
        classes = [_index(pipeline.class_index, label) for label in class_labels or range(pipeline.num_classes)]
        colors = [_index(pipeline.color_index, color) for color in color_labels or [FREE_NAME]]
    except ValueError as error:
        raise UserInputError(str(error)) from None
    if FREE in classes and not num_colors:
        raise UserInputError(f"class label {FREE_NAME!r} needs a model conditioned on a color as well")
    count = num_images or max(len(classes), len(colors) if color_labels else 0)
    repeated = [classes[i % len(classes)] for i in range(count)]
    return repeated, ([colors[i % len(colors)] for i in range(count)] if num_colors else None)


def _index(lookup: Callable[[int | str], int], label: int | str) -> int:
    return FREE if isinstance(label, str) and label.strip().lower() == FREE_NAME else lookup(label)


def label_names(pipeline: DiffusionPipeline, indices: Sequence[int], colors: Sequence[int] | None = None) -> list[str]:
    """Class names where the model has them, else the indices as text; with colors, "red seven" and the like
    ("any" for a label left free)."""
    names = pipeline.labels if has_named_classes(pipeline) else []
    found = [FREE_NAME if i == FREE else names[i] if i < len(names) else str(i) for i in indices]
    if colors is None:
        return found
    color_names = pipeline.colors
    return [f"{FREE_NAME if c == FREE else color_names[c]} {name}" for c, name in zip(colors, found, strict=True)]


def generate(
    pipeline: DiffusionPipeline,
    num_images: int,
    num_inference_steps: int,
    seed: int = 0,
    batch_size: int = 64,
    class_labels: Sequence[int] | torch.Tensor | None = None,
    color_labels: Sequence[int] | torch.Tensor | None = None,
    guidance_scale: float | None = None,
    progress: bool = True,
    color_guidance_scale: float | None = None,
) -> tuple[torch.Tensor, float]:
    """Sample `num_images` images in batches of `batch_size`; returns them as uint8 NCHW (the pixels a PNG
    holds) and the seconds spent in the pipeline.

    `class_labels` and `color_labels` hold one class (color) index per image, FREE for a label left free;
    `guidance_scale` and `color_guidance_scale` None are the pipeline's defaults. Image i uses a CPU generator
    seeded `seed + i` (module docstring).
    """
    check_positive(num_images=num_images, batch_size=batch_size, num_inference_steps=num_inference_steps)
    check_step_count(pipeline, num_inference_steps)
    check_guidance(pipeline, guidance_scale, color_guidance_scale)
    step_callback = supports_step_callback(pipeline)
    bar = tqdm(unit="step", desc="sampling", disable=not progress, leave=False)
    previous = dict(getattr(pipeline, "_progress_bar_config", {}))
    pipeline.set_progress_bar_config(**{**previous, "disable": True})  # one bar, over all batches
    batches, seconds = [], 0.0
    try:
        pipeline.scheduler.set_timesteps(num_inference_steps)  # Heun and the like take two model calls a step
        calls_per_batch = len(pipeline.scheduler.timesteps)
        bar.reset(total=-(-num_images // batch_size) * calls_per_batch)
        for start in range(0, num_images, batch_size):
            stop = min(start + batch_size, num_images)
            kwargs = {
                "generator": [torch.Generator().manual_seed(seed + i) for i in range(start, stop)],
                "num_inference_steps": num_inference_steps,
                "output_type": "np",
            }
            if class_labels is not None:
                kwargs["class_labels"] = _given(class_labels[start:stop])
            else:
                kwargs["batch_size"] = stop - start
            if color_labels is not None:
                kwargs["color_labels"] = _given(color_labels[start:stop])
            if guidance_scale is not None:
                kwargs["guidance_scale"] = guidance_scale
            if color_guidance_scale is not None:
                kwargs["color_guidance_scale"] = color_guidance_scale
            if step_callback:
                kwargs["callback_on_step_end"] = _step_counter(bar)
            began = time.perf_counter()
            images = torch.from_numpy(np.asarray(pipeline(**kwargs).images))
            batches.append((images * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 3, 1, 2))
            seconds += time.perf_counter() - began
            if not step_callback:
                bar.update(calls_per_batch)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    finally:
        bar.close()
        pipeline.set_progress_bar_config(**previous)
    return torch.cat(batches), seconds


def _given(labels: Sequence[int] | torch.Tensor) -> list[int | None]:
    """Label indices as the pipeline takes them: None for a label left free."""
    return [None if int(label) == FREE else int(label) for label in labels]


def _step_counter(bar: tqdm) -> Callable:
    def advance(pipeline, i, t, callback_kwargs):
        bar.update(1)
        return callback_kwargs

    return advance


def pil_images(images: torch.Tensor) -> list[Image.Image]:
    """uint8 NCHW images -> PIL images (mode L for 1 channel, RGB for 3)."""
    arrays = images.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0], mode="L") if a.shape[-1] == 1 else Image.fromarray(a) for a in arrays]


def save_samples(
    images: Sequence[Image.Image], output_dir: str | Path, names: Sequence[str] | None = None
) -> list[Path]:
    """Write `00000.png`, ... (`00000_seven.png` with class names) and `grid.png`, labelled where named."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        suffix = f"_{_safe(names[i])}" if names else ""
        path = output_dir / f"{i:05d}{suffix}.png"
        image.save(path)
        paths.append(path)
    sample_grid(images, names).save(output_dir / "grid.png")
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in name)

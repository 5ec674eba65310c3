"""Sampling from a saved pipeline (a folder or a Hub id) with any scheduler, and the pictures of the
diffusion process; the handlers of `ddpm-zoo sample` and `ddpm-zoo visualize`."""

import argparse
import inspect
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from tqdm.auto import tqdm

from ddpm_zoo import hub
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation import takes_guidance
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.outputs import check_image_suffix, check_output_file, check_output_folder, check_seed, writing
from ddpm_zoo.presets import DIGIT_NAMES
from ddpm_zoo.schedulers import SCHEDULERS, scheduler_name
from ddpm_zoo.visualize import (
    forward_strip,
    has_named_classes,
    reverse_animation,
    reverse_grid,
    sample_grid,
)

# The step counts each sampler is usually run at (and is tested at against closed forms).
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpmsolver": 20, "euler": 50, "unipc": 20}
EMBEDDED_DIGITS = "mnist-5k"  # = ddpm_zoo.data.EMBEDDED_MNIST; data is imported lazily (datasets is slow)
DEFAULT_FORWARD_TIMESTEPS = "0,50,100,200,300,400,600,800,999"
VISUALIZATIONS = ("forward", "reverse-grid", "animation", "grid")
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F", "P")


# ---- loading ----


def default_steps(pipeline: DiffusionPipeline) -> int:
    """The usual number of steps for the pipeline's scheduler (1000 for DDPM, 20-50 for the others)."""
    return DEFAULT_STEPS.get(scheduler_name(pipeline.scheduler) or "ddim", 50)


# ---- generating ----


def parse_class_labels(text: str | None) -> list[int | str] | None:
    """'0,1,seven' -> [0, 1, 'seven']; names are resolved (and checked) by the pipeline."""
    if text is None:
        return None
    labels: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UserInputError(f"--class_labels {text!r} has an empty entry")
        labels.append(int(item) if item.lstrip("-").isdigit() else item)
    return labels


def image_labels(
    pipeline: DiffusionPipeline, num_images: int | None, class_labels: Sequence[int | str] | None
) -> list[int] | None:
    """Class index of each image: `class_labels` repeated to `num_images` (default: every class once).
    None for an unconditional pipeline, where class labels are an error."""
    if not has_named_classes(pipeline):
        if class_labels:
            raise UserInputError("this model is unconditional; --class_labels needs a class-conditional one")
        return None
    try:
        indices = [pipeline.class_index(label) for label in class_labels or range(pipeline.num_classes)]
    except ValueError as error:
        raise UserInputError(str(error)) from None
    count = num_images or len(indices)
    return [indices[i % len(indices)] for i in range(count)]


def label_names(pipeline: DiffusionPipeline, indices: Sequence[int]) -> list[str]:
    """Class names where the model has them, else the indices as text."""
    names = pipeline.labels if has_named_classes(pipeline) else []
    return [names[i] if i < len(names) else str(i) for i in indices]


def _supports_step_callback(pipeline: DiffusionPipeline) -> bool:
    return "callback_on_step_end" in inspect.signature(pipeline.__call__).parameters


def generate(
    pipeline: DiffusionPipeline,
    num_images: int | None = None,
    class_labels: Sequence[int | str] | None = None,
    guidance_scale: float | None = None,
    num_inference_steps: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[list[Image.Image], list[int] | None]:
    """Generate `num_images` images in batches (class-conditional: cycling through `class_labels`).

    Image i is drawn with its own generator seeded `seed + i`, so it does not depend on `batch_size`.
    Returns the PIL images and their class indices (None for an unconditional model).
    """
    labels = image_labels(pipeline, num_images, class_labels)
    if guidance_scale is not None and not takes_guidance(pipeline):
        raise UserInputError(
            "this model is unconditional without guidance; --guidance_scale needs a class-conditional, an "
            "autoguided (guide_unet) or a self-guided (cluster_sizes) one"
        )
    total = len(labels) if labels is not None else (num_images or 16)
    steps = num_inference_steps or default_steps(pipeline)
    check_positive(num_images=total, batch_size=batch_size, num_inference_steps=steps)
    own_bar = _supports_step_callback(pipeline)  # else the pipeline shows its own progress bar
    if not own_bar:
        pipeline.set_progress_bar_config(disable=not progress)
    bar = tqdm(total=math.ceil(total / batch_size) * steps, unit="step", disable=not (progress and own_bar))
    step_callback = _step_counter(bar) if own_bar else None
    images: list[Image.Image] = []
    try:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            kwargs = {
                "generator": [torch.Generator().manual_seed(seed + i) for i in range(start, stop)],
                "num_inference_steps": steps,
                "output_type": "pil",
            }
            if labels is not None:
                kwargs["class_labels"] = labels[start:stop]
            else:
                kwargs["batch_size"] = stop - start
            if guidance_scale is not None:
                kwargs["guidance_scale"] = guidance_scale
            if step_callback is not None:
                kwargs["callback_on_step_end"] = step_callback
            images.extend(pipeline(**kwargs).images)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    finally:
        bar.close()
    return images, labels


def _step_counter(bar: tqdm) -> Callable:
    def advance(pipeline, i, t, callback_kwargs):
        bar.update(1)
        return callback_kwargs

    return advance


def check_positive(**values: int | float | None) -> None:
    """Each named value must be >= 1 (None is allowed: it means a default)."""
    for name, value in values.items():
        if value is not None and value < 1:
            raise UserInputError(f"--{name} must be at least 1, got {value}")


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


# ---- the forward process needs real images ----


def forward_images(
    dataset_name: str | None,
    train_data_dir: str | None,
    image_column: str | None,
    num_images: int,
    resolution: int,
    channels: int,
    seed: int = 0,
) -> tuple[torch.Tensor, list[str] | None]:
    """`num_images` real images in model space ([-1, 1], NCHW) and their class names: one per class
    where the data has labels. Grayscale data is tinted like colored-mnist for a 3-channel model."""
    from ddpm_zoo import data  # imported here: `datasets` is slow to import and only this needs it

    if train_data_dir is None and (dataset_name or EMBEDDED_DIGITS) == EMBEDDED_DIGITS:
        arrays, digit_labels = data.load_mnist_5k_arrays()
        indices = first_of_each_class(digit_labels.tolist(), num_images)
        pixels = [
            data.image_to_array(Image.fromarray(arrays[i], mode="L"), resolution, 1, False, f"digit #{i}")
            for i in indices
        ]
        decoded = data.DecodedImages(torch.from_numpy(np.stack(pixels)), None)
        labels, class_names, grayscale = [int(digit_labels[i]) for i in indices], DIGIT_NAMES, True
    else:
        source = data.load_image_source(dataset_name, train_data_dir, image_column=image_column)
        column = source.dataset[source.label_column] if source.label_column else None
        count = min(num_images, len(source.dataset))
        indices = first_of_each_class(column, count) if column else list(range(count))
        subset = data.ImageSource(
            source.dataset.select(indices),
            source.image_column,
            source.label_column,
            source.class_names,
        )
        grayscale = subset.dataset[0][subset.image_column].mode in GRAYSCALE_MODES
        decoded = data.decode_dataset(subset, resolution, 1 if grayscale else channels, convert_channels=True)
        labels = [int(column[i]) for i in indices] if column else None
        class_names = source.class_names
    if channels == 3 and grayscale:
        decoded = data.apply_colorizer(decoded, seed)
    images = decoded.images.float() / 127.5 - 1
    if labels is None:
        return images, None
    return images, [class_names[k] if k < len(class_names) else str(k) for k in labels]


def first_of_each_class(labels: Sequence[int], count: int) -> list[int]:
    """Indices of the first example of each class in class order, then further examples, `count` in all."""
    first: dict[int, int] = {}
    for index, label in enumerate(labels):
        first.setdefault(int(label), index)
    chosen = [first[label] for label in sorted(first)][:count]
    taken = set(chosen)
    chosen += [i for i in range(len(labels)) if i not in taken][: max(0, count - len(chosen))]
    return chosen


def parse_timesteps(text: str, num_train_timesteps: int) -> list[int]:
    """'0,100,999' -> [0, 100, 999], each within the training schedule."""
    try:
        timesteps = [int(item) for item in text.split(",")]
    except ValueError:
        raise UserInputError(f"--timesteps must be comma-separated integers, got {text!r}") from None
    bad = [t for t in timesteps if not 0 <= t < num_train_timesteps]
    if bad:
        raise UserInputError(f"--timesteps {bad} outside 0..{num_train_timesteps - 1}")
    return timesteps


# ---- command-line handlers ----


def sample_command(args: argparse.Namespace) -> int:
    """`ddpm-zoo sample MODEL`: write N samples as PNGs plus a labelled grid.png."""
    check_positive(num_images=args.num_images, batch_size=args.batch_size, num_inference_steps=args.num_inference_steps)
    check_seed(args.seed)
    if args.guidance_scale is not None and not args.guidance_scale >= 0:
        raise UserInputError(f"--guidance_scale must be >= 0, got {args.guidance_scale}")
    output_dir = Path(args.output_dir)
    check_output_folder(output_dir)
    pipeline = load_pipeline(args.model, args.device, args.scheduler, args.trust_remote_code)
    images, labels = generate(
        pipeline,
        num_images=args.num_images,
        class_labels=parse_class_labels(args.class_labels),
        guidance_scale=args.guidance_scale,
        num_inference_steps=args.num_inference_steps,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    names = label_names(pipeline, labels) if labels is not None else None
    with writing(output_dir):
        save_samples(images, output_dir, names)
    print(f"wrote {len(images)} images and grid.png to {args.output_dir}")
    return 0


def visualize_command(args: argparse.Namespace) -> int:
    """`ddpm-zoo visualize MODEL --kind ...`: one picture (PNG) or animation (GIF) of the process."""
    check_positive(
        num_images=args.num_images,
        num_inference_steps=args.num_inference_steps,
        num_columns=args.num_columns,
        num_frames=args.num_frames,
        scale=args.scale,
    )
    if not args.fps > 0:
        raise UserInputError(f"--fps must be positive, got {args.fps}")
    check_seed(args.seed)
    output = Path(args.output or ("reverse.gif" if args.kind == "animation" else f"{args.kind}.png"))
    if args.kind == "animation" and output.suffix.lower() != ".gif":
        raise UserInputError(f"--kind animation writes a GIF; give --output a .gif name, not {output.name}")
    check_image_suffix(output)
    check_output_file(output)
    scheduler = args.scheduler if args.kind != "forward" else None
    pipeline = load_pipeline(args.model, args.device, scheduler, args.trust_remote_code)
    pipeline.set_progress_bar_config(disable=args.kind not in ("reverse-grid", "animation"), leave=False)
    try:
        picture = _draw(pipeline, args, output)
    except ValueError as error:
        raise UserInputError(str(error)) from None
    if picture is not None:
        with writing(output):
            output.parent.mkdir(parents=True, exist_ok=True)
            picture.save(output)
    print(f"wrote {output}")
    return 0


def _draw(pipeline: DiffusionPipeline, args: argparse.Namespace, output: Path) -> Image.Image | None:
    """Make the picture `args.kind` asks for (the animation is written to `output` directly)."""
    class_labels = parse_class_labels(args.class_labels)
    steps = args.num_inference_steps or default_steps(pipeline)
    if args.kind == "forward":
        config = pipeline.unet.config
        images, names = forward_images(
            args.dataset_name,
            args.train_data_dir,
            args.image_column,
            args.num_images or 4,
            _square(config.sample_size),
            config.in_channels,
            args.seed,
        )
        timesteps = parse_timesteps(args.timesteps, len(pipeline.scheduler.alphas_cumprod))
        generator = torch.Generator().manual_seed(args.seed)
        return forward_strip(images, timesteps, pipeline.scheduler, generator, args.scale, names)
    if args.kind == "grid":
        images, labels = generate(
            pipeline, args.num_images, class_labels, args.guidance_scale, steps, args.seed, args.batch_size
        )
        names = label_names(pipeline, labels) if labels is not None else None
        return sample_grid(images, names, scale=args.scale)
    if not _supports_step_callback(pipeline):
        raise UserInputError("this pipeline has no callback_on_step_end; it cannot show the reverse process")
    rows = len(image_labels(pipeline, None, class_labels) or []) or args.num_images or 10
    generator = [torch.Generator().manual_seed(args.seed + i) for i in range(rows)]
    guidance = args.guidance_scale
    if args.kind == "reverse-grid":
        return reverse_grid(pipeline, args.num_columns, steps, class_labels, rows, guidance, generator, args.scale)
    with writing(output):
        reverse_animation(
            pipeline, output, args.num_frames, args.fps, steps, class_labels, rows, guidance, generator, args.scale
        )
    return None


def _square(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    if size[0] != size[1]:
        raise UserInputError(f"the forward strip needs square images; this model makes {size[0]}x{size[1]}")
    return size[0]


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help="a pipeline folder or a Hub repo id")
    parser.add_argument(
        "--scheduler",
        choices=list(SCHEDULERS),
        default=None,
        help="sampler to swap in (default: the saved one, DDPM)",
    )
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help="denoising steps (default: ddpm 1000, ddim 50, dpmsolver 20, euler 50, unipc 20)",
    )
    parser.add_argument(
        "--class_labels",
        default=None,
        help="comma-separated class indices or names, e.g. 0,1,seven (class-conditional models)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="classifier-free guidance weight w >= 0: 0 unconditional, 1 conditional, >1 stronger "
        "(default: the pipeline's, 3); for an unconditional model with a guide_unet, the autoguidance weight; "
        "with cluster_sizes, the self-guidance weight",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--batch_size", type=int, default=64, help="images per pipeline call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, then mps, then cpu)")
    hub.add_trust_remote_code_option(parser)


def add_cli_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `sample` and `visualize` on the `ddpm-zoo` command's subparsers (each sets `func`)."""
    sample = subparsers.add_parser(
        "sample",
        help="generate images from a pipeline folder or Hub repo",
        description="Generate images with any scheduler and write them as PNGs plus grid.png.",
    )
    _add_model_options(sample)
    sample.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="how many images (default: 16; class-conditional: one per --class_labels entry, or per class)",
    )
    sample.add_argument("--output_dir", default="samples", help="folder for the PNGs and grid.png")
    sample.set_defaults(func=sample_command)

    visualize = subparsers.add_parser(
        "visualize",
        help="draw the forward or reverse diffusion process, or a labelled sample grid",
        description=(
            "forward: real images noised by q(x_t|x_0) at --timesteps; reverse-grid: one row per class, "
            "x_t after evenly spaced denoising steps; animation: a GIF of the reverse process; "
            "grid: labelled samples."
        ),
    )
    _add_model_options(visualize)
    visualize.add_argument("--kind", choices=VISUALIZATIONS, required=True, help="which picture to draw")
    visualize.add_argument(
        "--output", default=None, help="file to write (default: KIND.png, reverse.gif for the animation)"
    )
    visualize.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="rows of the forward strip (default 4), samples of the grid, rows of unconditional reverse pictures",
    )
    visualize.add_argument("--timesteps", default=DEFAULT_FORWARD_TIMESTEPS, help="forward: comma-separated t to show")
    visualize.add_argument("--num_columns", type=int, default=10, help="reverse-grid: denoising steps shown")
    visualize.add_argument("--num_frames", type=int, default=50, help="animation: frames")
    visualize.add_argument("--fps", type=float, default=10.0, help="animation: frames per second")
    visualize.add_argument("--scale", type=int, default=None, help="pixel enlargement (default: automatic)")
    visualize.add_argument(
        "--dataset_name",
        default=None,
        help=f"forward: Hub dataset or {EMBEDDED_DIGITS} (the default, embedded digits)",
    )
    visualize.add_argument("--train_data_dir", default=None, help="forward: a local image folder instead")
    visualize.add_argument("--image_column", default=None, help="forward: the dataset's image column")
    visualize.set_defaults(func=visualize_command)


__all__ = [
    "DEFAULT_STEPS",
    "add_cli_parsers",
    "forward_images",
    "generate",
    "parse_class_labels",
    "sample_command",
    "save_samples",
    "visualize_command",
]

"""`ddpm-zoo visualize MODEL --kind ...`: one picture (PNG) or animation (GIF) of the diffusion process."""

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from PIL import Image

from ddpm_zoo.allocator import keep_freed_memory
from ddpm_zoo.commands.points import visualize_points
from ddpm_zoo.commands.sample import add_model_options, check_sampling_options, parse_class_labels, sample_images
from ddpm_zoo.data import EMBEDDED_MNIST
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.generation import check_guidance, check_positive, check_step_count, default_steps, image_labels
from ddpm_zoo.introspection import num_train_timesteps, supports_step_callback
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.outputs import check_image_suffix, check_output_file, writing
from ddpm_zoo.pipelines import PointDiffusionPipeline
from ddpm_zoo.visualize import (
    default_forward_timesteps,
    forward_images,
    forward_strip,
    reverse_animation,
    reverse_grid,
    sample_grid,
)

VISUALIZATIONS = ("forward", "reverse-grid", "animation", "grid", "vector-field", "variance")
POINT_ONLY = ("vector-field", "variance")  # pictures of a 2-D point model (the toy-2d preset)


def parse_timesteps(text: str | None, num_train_timesteps: int) -> list[int]:
    """'0,100,999' -> [0, 100, 999], each within the training schedule; None -> the default columns for T."""
    if text is None:
        return default_forward_timesteps(num_train_timesteps)
    try:
        timesteps = [int(item) for item in text.split(",")]
    except ValueError:
        raise UserInputError(f"--timesteps must be comma-separated integers, got {text!r}") from None
    bad = [t for t in timesteps if not 0 <= t < num_train_timesteps]
    if bad:
        raise UserInputError(f"--timesteps {bad} outside 0..{num_train_timesteps - 1}")
    return timesteps


def run(args: argparse.Namespace) -> int:
    """`ddpm-zoo visualize MODEL --kind ...`: one picture (PNG) or animation (GIF) of the process."""
    keep_freed_memory()
    check_positive(
        num_images=args.num_images, num_columns=args.num_columns, num_frames=args.num_frames, scale=args.scale
    )
    check_sampling_options(args)
    if not args.fps > 0:
        raise UserInputError(f"--fps must be positive, got {args.fps}")
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
    if isinstance(pipeline, PointDiffusionPipeline):
        return visualize_points(pipeline, args, output)
    if args.kind in POINT_ONLY:
        raise UserInputError(f"--kind {args.kind} is a picture of a 2-D point model (the toy-2d preset)")
    if args.kind == "forward":
        config = pipeline.unet.config
        timesteps = parse_timesteps(args.timesteps, num_train_timesteps(pipeline))
        images, names = forward_images(
            args.dataset_name,
            args.train_data_dir,
            args.image_column,
            args.num_images or 4,
            _square(config.sample_size),
            config.in_channels,
            args.seed,
        )
        generator = torch.Generator().manual_seed(args.seed)
        return forward_strip(images, timesteps, pipeline.scheduler, generator, args.scale, names)
    class_labels = parse_class_labels(args.class_labels)
    steps = args.num_inference_steps or default_steps(pipeline)
    check_step_count(pipeline, steps)
    color_labels = parse_class_labels(args.color_labels, "--color_labels")
    if args.kind == "grid":
        columns = None
        if getattr(pipeline, "num_colors", 0) and not (class_labels or color_labels or args.num_images):
            class_labels, color_labels = digit_color_table(pipeline.num_classes, pipeline.num_colors)
            columns = pipeline.num_colors
        images, names = sample_images(
            pipeline,
            args.num_images,
            class_labels,
            args.guidance_scale,
            steps,
            args.seed,
            args.batch_size,
            color_labels,
            args.color_guidance_scale,
        )
        return sample_grid(images, names, columns, scale=args.scale)
    if color_labels or args.color_guidance_scale is not None:
        raise UserInputError("--color_labels and --color_guidance_scale apply to --kind grid")
    if not supports_step_callback(pipeline):
        raise UserInputError("this pipeline has no callback_on_step_end; it cannot show the reverse process")
    check_guidance(pipeline, args.guidance_scale)
    labels, _ = image_labels(pipeline, None, class_labels)
    rows = len(labels or []) or args.num_images or 10
    generator = [torch.Generator().manual_seed(args.seed + i) for i in range(rows)]
    guidance = args.guidance_scale
    if args.kind == "reverse-grid":
        return reverse_grid(pipeline, args.num_columns, steps, class_labels, rows, guidance, generator, args.scale)
    with writing(output):
        reverse_animation(
            pipeline, output, args.num_frames, args.fps, steps, class_labels, rows, guidance, generator, args.scale
        )
    return None


def digit_color_table(num_classes: int, num_colors: int) -> tuple[list[int], list[int]]:
    """Labels of a class x color table, one row per class and one column per color."""
    return [c for c in range(num_classes) for _ in range(num_colors)], list(range(num_colors)) * num_classes


def _square(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    if size[0] != size[1]:
        raise UserInputError(f"the forward strip needs square images; this model makes {size[0]}x{size[1]}")
    return size[0]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `visualize` on the `ddpm-zoo` command's subparsers."""
    parser = subparsers.add_parser(
        "visualize",
        help="draw the forward or reverse diffusion process, or a labelled sample grid",
        description=(
            "forward: real images noised by q(x_t|x_0) at --timesteps; reverse-grid: one row per class, "
            "x_t after evenly spaced denoising steps; animation: a GIF of the reverse process; "
            "grid: labelled samples. A 2-D point model (toy-2d) draws each as scatter plots of --num_images "
            "points, and also vector-field (the denoiser's E[x_0 | x_t] - x_t at --timesteps) and variance (a "
            "learned sigma_theta^2(t) against beta_t and beta~_t)."
        ),
    )
    add_model_options(parser)
    parser.add_argument("--kind", choices=VISUALIZATIONS, required=True, help="which picture to draw")
    parser.add_argument(
        "--output", default=None, help="file to write (default: KIND.png, reverse.gif for the animation)"
    )
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="rows of the forward strip (default 4), samples of the grid, rows of unconditional reverse pictures",
    )
    parser.add_argument(
        "--timesteps",
        default=None,
        help="forward: comma-separated t to show (default: 0,50,100,200,300,400,600,800,999 for a model trained "
        "with 1000 timesteps, the same shares of the schedule for others)",
    )
    parser.add_argument("--num_columns", type=int, default=10, help="reverse-grid: denoising steps shown")
    parser.add_argument("--num_frames", type=int, default=50, help="animation: frames")
    parser.add_argument("--fps", type=float, default=10.0, help="animation: frames per second")
    parser.add_argument("--scale", type=int, default=None, help="pixel enlargement (default: automatic)")
    parser.add_argument(
        "--dataset_name",
        default=None,
        help=f"forward: Hub dataset or {EMBEDDED_MNIST} (the default, embedded digits)",
    )
    parser.add_argument("--train_data_dir", default=None, help="forward: a local image folder instead")
    parser.add_argument("--image_column", default=None, help="forward: the dataset's image column")
    parser.set_defaults(func=run)

"""`ddpm-zoo sample MODEL`: generate images with any scheduler and write them as PNGs plus a labelled grid;
also the options every command that samples a loaded model shares (`add_model_options`)."""

import argparse
from collections.abc import Sequence
from pathlib import Path

from diffusers import DiffusionPipeline
from PIL import Image

from ddpm_zoo.allocator import keep_freed_memory
from ddpm_zoo.commands import add_trust_remote_code_option
from ddpm_zoo.commands.points import sample_points_command
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.generation import (
    DEFAULT_STEPS,
    check_positive,
    default_steps,
    generate,
    image_labels,
    label_names,
    pil_images,
    save_samples,
)
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.outputs import check_output_folder, check_seed, writing
from ddpm_zoo.pipelines import PointDiffusionPipeline
from ddpm_zoo.schedulers import SCHEDULERS

DEFAULT_NUM_IMAGES = 16  # unconditional models; class-conditional ones draw each requested class once


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """MODEL and the sampling options of `sample` and `visualize`."""
    parser.add_argument("model", metavar="MODEL", help="a pipeline folder or a Hub repo id")
    parser.add_argument(
        "--scheduler",
        choices=list(SCHEDULERS),
        default=None,
        help="sampler to swap in (default: the saved one, DDPM)",
    )
    usual = ", ".join(f"{name} {steps}" for name, steps in DEFAULT_STEPS.items() if name in SCHEDULERS)
    parser.add_argument(
        "--num_inference_steps",
        type=int,
        default=None,
        help=f"denoising steps (default: {usual}; at most the model's training timesteps)",
    )
    parser.add_argument(
        "--class_labels",
        default=None,
        help="comma-separated class indices or names, e.g. 0,1,seven (class-conditional models); "
        "any leaves the class free (models with colors)",
    )
    parser.add_argument(
        "--color_labels",
        default=None,
        help="comma-separated color indices or names, e.g. red,any,blue (models conditioned on digit and color; "
        "any, the default, leaves the color free)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help="classifier-free guidance weight w >= 0: 0 unconditional, 1 conditional, >1 stronger "
        "(default: the pipeline's, 3); for an unconditional model with a guide_unet, the autoguidance weight; "
        "with cluster_sizes, the self-guidance weight",
    )
    parser.add_argument(
        "--color_guidance_scale",
        type=float,
        default=None,
        help="guidance weight w >= 0 of the color, composed with the class's (default: the pipeline's, 2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--batch_size", type=int, default=64, help="images per pipeline call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda, then mps, then cpu)")
    add_trust_remote_code_option(parser)


def parse_class_labels(text: str | None, option: str = "--class_labels") -> list[int | str] | None:
    """'0,1,seven' -> [0, 1, 'seven']; names are resolved (and checked) by the pipeline."""
    if text is None:
        return None
    labels: list[int | str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UserInputError(f"{option} {text!r} has an empty entry")
        labels.append(int(item) if item.lstrip("-").isdigit() else item)
    return labels


def sample_images(
    pipeline: DiffusionPipeline,
    num_images: int | None,
    class_labels: Sequence[int | str] | None,
    guidance_scale: float | None,
    num_inference_steps: int,
    seed: int,
    batch_size: int,
    color_labels: Sequence[int | str] | None = None,
    color_guidance_scale: float | None = None,
) -> tuple[list[Image.Image], list[str] | None]:
    """PIL samples and their class names (None for an unconditional model): `num_images` of them, cycling
    through `class_labels` and `color_labels` (default: each class once; unconditional: DEFAULT_NUM_IMAGES)."""
    labels, colors = image_labels(pipeline, num_images, class_labels, color_labels)
    count = len(labels) if labels is not None else (num_images or DEFAULT_NUM_IMAGES)
    images, _ = generate(
        pipeline,
        count,
        num_inference_steps,
        seed,
        batch_size,
        class_labels=labels,
        color_labels=colors,
        guidance_scale=guidance_scale,
        color_guidance_scale=color_guidance_scale,
    )
    return pil_images(images), (label_names(pipeline, labels, colors) if labels is not None else None)


def check_sampling_options(args: argparse.Namespace) -> None:
    """The options of `add_model_options` that can be checked before a model is loaded."""
    check_positive(batch_size=args.batch_size, num_inference_steps=args.num_inference_steps)
    check_seed(args.seed)
    for name in ("guidance_scale", "color_guidance_scale"):
        value = getattr(args, name)
        if value is not None and not value >= 0:
            raise UserInputError(f"--{name} must be >= 0, got {value}")


def run(args: argparse.Namespace) -> int:
    """`ddpm-zoo sample MODEL`: write N samples as PNGs plus a labelled grid.png."""
    keep_freed_memory()
    check_positive(num_images=args.num_images)
    check_sampling_options(args)
    output_dir = Path(args.output_dir)
    check_output_folder(output_dir)
    pipeline = load_pipeline(args.model, args.device, args.scheduler, args.trust_remote_code)
    if isinstance(pipeline, PointDiffusionPipeline):
        return sample_points_command(pipeline, args, output_dir)
    steps = args.num_inference_steps or default_steps(pipeline)
    images, names = sample_images(
        pipeline,
        args.num_images,
        parse_class_labels(args.class_labels),
        args.guidance_scale,
        steps,
        args.seed,
        args.batch_size,
        parse_class_labels(args.color_labels, "--color_labels"),
        args.color_guidance_scale,
    )
    with writing(output_dir):
        save_samples(images, output_dir, names)
    print(f"wrote {len(images)} images and grid.png to {args.output_dir}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `sample` on the `ddpm-zoo` command's subparsers."""
    parser = subparsers.add_parser(
        "sample",
        help="generate images from a pipeline folder or Hub repo",
        description="Generate images with any scheduler and write them as PNGs plus grid.png.",
    )
    add_model_options(parser)
    parser.add_argument(
        "--num_images",
        type=int,
        default=None,
        help=f"how many images (default: {DEFAULT_NUM_IMAGES}; class-conditional: one per --class_labels entry, "
        "or per class)",
    )
    parser.add_argument("--output_dir", default="samples", help="folder for the PNGs and grid.png")
    parser.set_defaults(func=run)

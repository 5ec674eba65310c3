"""`ddpm-zoo evaluate MODEL`: score a model under the published protocol (docs/evaluation.md), sweeping the
requested settings; prints the table, writes the JSON and refreshes a trained folder's model card."""

import argparse
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from ddpm_zoo.allocator import keep_freed_memory
from ddpm_zoo.commands import add_trust_remote_code_option
from ddpm_zoo.commands.points import evaluate_points
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation import (
    PROTOCOL_BATCH_SIZE,
    PROTOCOL_SAMPLES,
    PROTOCOL_SCHEDULER,
    PROTOCOL_STEPS,
    RESULTS_FILE,
    card_row,
    make_context,
    results_document,
    sweep,
    update_model_card,
    write_results,
)
from ddpm_zoo.evaluation.likelihood import (
    LIKELIHOOD_FILE,
    LIKELIHOOD_IMAGES,
    LIKELIHOOD_TIMESTEPS,
    add_bound_to_card,
    describe_bound,
    likelihood_document,
    likelihood_reference,
    pipeline_bound,
)
from ddpm_zoo.evaluation.protocol import CONDITIONS, MAX_SAMPLES
from ddpm_zoo.introspection import default_guidance_scale, takes_color_labels, takes_guidance
from ddpm_zoo.loading import default_device, load_pipeline
from ddpm_zoo.outputs import check_output_file, check_seed
from ddpm_zoo.pipelines import PointDiffusionPipeline
from ddpm_zoo.schedulers import SCHEDULERS

MODEL_KINDS = {"auto": None, "digits": True, "other": False}  # --model_kind: digit metrics or not


def parse_list(text: str, convert: Callable[[str], Any], option: str, check: Callable, requirement: str) -> list:
    """A comma list of `option` values, each converted and checked; one error line naming `requirement`."""
    try:
        values = [convert(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        values = []
    if not values or not all(check(value) for value in values):
        raise UserInputError(f"{option} takes a comma-separated list of {requirement}, got {text!r}")
    return values


def output_path(model: str, output: str | None, name: str = RESULTS_FILE) -> Path:
    """Where the JSON goes: --output (a .json file, or a folder), else next to the model."""
    if output is not None:
        target = Path(output)
        return target if target.suffix == ".json" else target / name
    return Path(model) / name if Path(model).is_dir() else Path.cwd() / name


def load_unet_pipeline(model: str, device: str | None, trust_remote_code: bool = False) -> DiffusionPipeline:
    """`ddpm_zoo.loading.load_pipeline`, for pipelines with a UNet (the ones evaluation can score)."""
    return check_unet_pipeline(load_pipeline(model, device, trust_remote_code=trust_remote_code), model)


def check_unet_pipeline(pipeline: DiffusionPipeline, model: str) -> DiffusionPipeline:
    """`pipeline`, which the image metrics can score only if it has a UNet."""
    if not hasattr(pipeline, "unet"):
        raise UserInputError(f"{model} is not a ddpm-zoo style pipeline (it has no unet)")
    return pipeline


def run(args: argparse.Namespace) -> int:
    """`ddpm-zoo evaluate`: sweep the requested settings, print the table, write the JSON; with `--nll`, the
    variational bound in bits per dimension instead."""
    keep_freed_memory()
    if args.nll:
        return run_likelihood(args)
    schedulers = parse_list(
        args.scheduler,
        str,
        "--scheduler",
        lambda s: s in SCHEDULERS or s == "own",
        f"scheduler names ({', '.join(SCHEDULERS)}, own)",
    )
    steps = None  # the protocol's, capped at the model's training timesteps
    if args.steps is not None:
        steps = parse_list(args.steps, int, "--steps", lambda n: n >= 1, "positive integers")
    guidance = (
        [None]
        if args.guidance is None
        else parse_list(args.guidance, float, "--guidance", lambda g: g >= 0 and math.isfinite(g), "numbers >= 0")
    )
    if args.num_samples < 2 or args.batch_size < 1:
        raise UserInputError("--num_samples must be at least 2 and --batch_size at least 1")
    if args.num_samples > MAX_SAMPLES:
        raise UserInputError(
            f"--num_samples must be at most {MAX_SAMPLES:,} (every sample is held in memory), got {args.num_samples:,}"
        )
    check_seed(args.seed)
    target = output_path(args.model, args.output)
    check_output_file(target)
    pipeline = load_pipeline(args.model, args.device or default_device(), trust_remote_code=args.trust_remote_code)
    if isinstance(pipeline, PointDiffusionPipeline):
        return evaluate_points(pipeline, args, [None if s == "own" else s for s in schedulers], steps, guidance, target)
    pipeline = check_unet_pipeline(pipeline, args.model)
    if args.guidance is not None and not takes_guidance(pipeline):
        raise UserInputError(
            "--guidance applies to class-conditional, autoguided (guide_unet) and self-guided (cluster_sizes) "
            "models only"
        )
    conditions = None
    if args.conditions is not None:
        if not takes_color_labels(pipeline):
            raise UserInputError("--conditions applies to models conditioned on digit and color only")
        conditions = parse_list(args.conditions, str, "--conditions", CONDITIONS.__contains__, ", ".join(CONDITIONS))
    digits = MODEL_KINDS[args.model_kind]
    context = make_context(pipeline, digits, args.reference, extra=not args.no_extra_metrics)
    rows = sweep(
        pipeline,
        [None if s == "own" else s for s in schedulers],
        steps,
        guidance,
        args.num_samples,
        args.batch_size,
        args.seed,
        context=context,
        conditions=conditions,
    )
    document = results_document(args.model, rows, context)
    path = write_results(document, target)
    print(f"results written to {path}")
    if Path(args.model).is_dir():
        update_model_card(Path(args.model), document, card_row(rows, default_guidance_scale(pipeline)), path)
    return 0


def run_likelihood(args: argparse.Namespace) -> int:
    """`ddpm-zoo evaluate --nll`: the bound on real images, printed with its standard error, written as JSON
    and put in a trained folder's model card."""
    if args.nll_images < 2 or args.nll_timesteps < 1 or args.batch_size < 1:
        raise UserInputError("--nll_images must be at least 2, --nll_timesteps and --batch_size at least 1")
    check_seed(args.seed)
    target = output_path(args.model, args.output, LIKELIHOOD_FILE)
    check_output_file(target)
    pipeline = load_unet_pipeline(args.model, args.device or default_device(), args.trust_remote_code)
    reference = likelihood_reference(pipeline, args.reference, MODEL_KINDS[args.model_kind])
    images = reference.images[: args.nll_images]
    estimate = pipeline_bound(pipeline, images, args.nll_timesteps, args.batch_size, args.seed)
    print(describe_bound(estimate))
    document = likelihood_document(args.model, estimate, reference, pipeline, args.seed)
    path = write_results(document, target)
    print(f"results written to {path}")
    if Path(args.model).is_dir() and path.resolve() == (Path(args.model) / LIKELIHOOD_FILE).resolve():
        card = add_bound_to_card(Path(args.model), document)
        if card is not None:
            print(f"model card updated with the bound: {card}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `evaluate` on the `ddpm-zoo` command's subparsers."""
    parser = subparsers.add_parser(
        "evaluate",
        help="score a model offline (digit metrics; FID/KID, FD-DINOv2 where available); sweeps settings",
        description="Sample a model and score it under the protocol of docs/evaluation.md. Comma lists "
        "in --scheduler, --steps and --guidance make a sweep table.",
    )
    parser.add_argument("model", help="a pipeline folder or Hub model id")
    parser.add_argument(
        "--num_samples", type=int, default=PROTOCOL_SAMPLES, help=f"samples per setting (default {PROTOCOL_SAMPLES})"
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=PROTOCOL_BATCH_SIZE,
        help=f"images per pipeline call (default {PROTOCOL_BATCH_SIZE}); the samples do not depend on it",
    )
    parser.add_argument(
        "--scheduler",
        default=PROTOCOL_SCHEDULER,
        help=f"comma list of {', '.join(SCHEDULERS)}, or 'own' (default {PROTOCOL_SCHEDULER})",
    )
    parser.add_argument(
        "--steps",
        default=None,
        help=f"comma list of denoising step counts (default {PROTOCOL_STEPS}, at most the model's training timesteps)",
    )
    parser.add_argument(
        "--guidance",
        default=None,
        help="comma list of guidance scales (class-conditional, autoguided or self-guided models; default: the "
        "pipeline's own)",
    )
    parser.add_argument(
        "--conditions",
        default=None,
        help=f"for a model conditioned on digit and color, comma list of what is requested: {', '.join(CONDITIONS)} "
        "(the other label left free; default: all three)",
    )
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument(
        "--output",
        default=None,
        help=f"JSON file or folder (default: MODEL/{RESULTS_FILE} for a folder, ./{RESULTS_FILE} for a Hub id); "
        "a trained folder's model card is refreshed only from its own results file",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="real images for non-digit models: a Hub dataset id or a local folder; for a 2-D point model, the "
        "generated set to compare with (default: the one it was trained on)",
    )
    parser.add_argument(
        "--model_kind",
        choices=tuple(MODEL_KINDS),
        default="auto",
        help="digit metrics or not (auto: 1/3-channel 28 px or digit class names)",
    )
    parser.add_argument("--no_extra_metrics", action="store_true", help="skip FID/KID and FD-DINOv2")
    likelihood = parser.add_argument_group("likelihood (docs/evaluation.md)")
    likelihood.add_argument(
        "--nll",
        action="store_true",
        help=f"report the variational bound on real images in bits/dim instead of sampling (JSON: {LIKELIHOOD_FILE})",
    )
    likelihood.add_argument(
        "--nll_images",
        type=int,
        default=LIKELIHOOD_IMAGES,
        help=f"real images to evaluate (default {LIKELIHOOD_IMAGES}: the embedded digits' classifier test split for "
        "digit models; --reference for others)",
    )
    likelihood.add_argument(
        "--nll_timesteps",
        type=int,
        default=LIKELIHOOD_TIMESTEPS,
        help=f"KL terms evaluated per image, stratified over 1..T-1 (default {LIKELIHOOD_TIMESTEPS}; T - 1 or more: "
        "all, exact)",
    )
    parser.add_argument("--device", default=None, help="default: cuda, then mps, then cpu")
    add_trust_remote_code_option(parser)
    parser.set_defaults(func=run)

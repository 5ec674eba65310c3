"""The evaluation protocol (docs/evaluation.md): sample a pipeline under one setting and score it, or sweep
settings; each setting gives one result row."""

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ddpm_zoo.data import COLOR_NAMES
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation.classifier import NUM_DIGITS, classify
from ddpm_zoo.evaluation.fidelity import dinov2_features
from ddpm_zoo.evaluation.metrics import (
    color_accuracy,
    color_counts,
    conditional_accuracy,
    feature_statistics,
    frechet_distance,
    recognisability,
)
from ddpm_zoo.evaluation.references import EvaluationContext, Reference, make_context
from ddpm_zoo.evaluation.report import format_table
from ddpm_zoo.generation import FREE, check_step_count, generate
from ddpm_zoo.introspection import (
    default_guidance_scale,
    is_conditional,
    num_classes,
    num_train_timesteps,
    takes_color_labels,
    takes_guidance,
)
from ddpm_zoo.schedulers import make_scheduler, scheduler_name

# Protocol v1 (docs/evaluation.md): N = 5,000 samples in batches of 250, DPM-Solver++ at 25 steps (at most T).
PROTOCOL_SAMPLES = 5000
PROTOCOL_BATCH_SIZE = 250
PROTOCOL_SCHEDULER = "dpmsolver"
PROTOCOL_STEPS = 25
# A row holds all its samples in memory: at most 20 times the 50,000 of the usual FID protocol.
MAX_SAMPLES = 1_000_000


# What a model conditioned on digit and color is asked for: both, or one with the other left free.
BOTH, DIGIT_ONLY, COLOR_ONLY = "digit+color", "digit", "color"
CONDITIONS = (BOTH, DIGIT_ONLY, COLOR_ONLY)


def protocol_steps(pipeline: DiffusionPipeline) -> int:
    """The protocol's step count, capped at the model's training timesteps T."""
    return min(PROTOCOL_STEPS, num_train_timesteps(pipeline))


def balanced_labels(count: int, classes: int) -> torch.Tensor:
    """0, 1, ..., classes-1, 0, 1, ...: every class equally often (to within one)."""
    return torch.arange(count) % classes


def digit_metrics(
    images: torch.Tensor, context: EvaluationContext, labels: torch.Tensor | None, colors: torch.Tensor | None
) -> dict[str, Any]:
    """Recognisability, FD in classifier features, and where they apply conditional accuracy (digits
    requested) and color accuracy (against the requested colors, or a clean palette color where the colors
    were left free)."""
    probabilities, features = classify(images)
    predicted = probabilities.argmax(dim=1)
    row: dict[str, Any] = {"recognisability": recognisability(probabilities)}
    if labels is not None and bool((labels != FREE).all()):
        row["conditional_accuracy"] = conditional_accuracy(probabilities, labels)
    if colors is not None and bool((colors == FREE).any()):
        colors = None
    row["fd_digits"] = frechet_distance(*feature_statistics(features), *context.digit_statistics())
    if images.shape[1] == 3:
        row["color_accuracy"] = color_accuracy(images, colors)
        row["color_reference"] = "requested" if colors is not None else "palette"
        row["color_counts"] = color_counts(images)
    row["digit_counts"] = torch.bincount(predicted, minlength=NUM_DIGITS).tolist()
    return row


def extra_metrics(images: torch.Tensor, context: EvaluationContext) -> dict[str, float]:
    """FID/KID and FD-DINOv2 where their weights are available (else skipped with a message, once)."""
    row: dict[str, float] = {}
    inception = context.inception()
    if inception is not None:
        row.update(inception(images))
    dinov2 = context.dinov2()
    if dinov2 is not None:
        model, reference_stats = dinov2
        generated = feature_statistics(dinov2_features(model, images, context.device))
        row["fd_dinov2"] = frechet_distance(*generated, *reference_stats)
    return row


def evaluate_pipeline(
    pipeline: DiffusionPipeline,
    num_samples: int = PROTOCOL_SAMPLES,
    batch_size: int = PROTOCOL_BATCH_SIZE,
    scheduler: str | None = PROTOCOL_SCHEDULER,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int = 0,
    digits: bool | None = None,
    reference: Reference | str | None = None,
    extra: bool = True,
    context: EvaluationContext | None = None,
    progress: bool = True,
    conditions: str | None = None,
) -> dict[str, Any]:
    """Sample `num_samples` images under one setting and score them; returns one result row.

    The defaults are protocol v1 (docs/evaluation.md): N = 5,000 in batches of 250, DPM-Solver++ 25 steps
    (`num_inference_steps` None: `protocol_steps`), seed 0. `scheduler` is a ddpm-zoo scheduler name (None
    keeps the pipeline's own); `guidance_scale` None uses the pipeline's default. Digit models get
    recognisability and FD in classifier features, plus conditional accuracy (class-conditional) and color
    accuracy (RGB); FID/KID and FD-DINOv2 are added when available and `extra` is set. Labels are balanced
    over the classes. For a model conditioned on digit and color, `conditions` says which are requested
    (CONDITIONS; None: both), the other left free.
    """
    if num_inference_steps is None:
        num_inference_steps = protocol_steps(pipeline)
    if num_samples < 2 or batch_size < 1 or num_inference_steps < 1:
        raise UserInputError("num_samples must be >= 2, batch_size and num_inference_steps >= 1")
    if num_samples > MAX_SAMPLES:
        raise UserInputError(f"num_samples must be at most {MAX_SAMPLES:,}, got {num_samples:,}")
    context = context or make_context(pipeline, digits, reference, extra)
    original = pipeline.scheduler
    if scheduler is not None:
        pipeline.scheduler = make_scheduler(scheduler, original.config)
    try:
        row = _evaluate_setting(
            pipeline, num_samples, batch_size, num_inference_steps, guidance_scale, seed, context, progress, conditions
        )
    finally:
        pipeline.scheduler = original
    return row


def requested_labels(
    pipeline: DiffusionPipeline, num_samples: int, seed: int, conditions: str | None = None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Balanced digit labels for a class-conditional pipeline and, for one that takes `color_labels`
    (joint digit-and-color conditioning), balanced colors in a seeded order; None where not taken, FREE
    where `conditions` leaves that label free."""
    labels = balanced_labels(num_samples, num_classes(pipeline)) if is_conditional(pipeline) else None
    colors = None
    if takes_color_labels(pipeline):
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
        colors = balanced_labels(num_samples, len(COLOR_NAMES))[order]
        conditions = conditions or BOTH
        if conditions not in CONDITIONS:
            raise UserInputError(f"conditions must be one of {', '.join(CONDITIONS)}, got {conditions!r}")
        if conditions == DIGIT_ONLY:
            colors = torch.full_like(colors, FREE)
        elif conditions == COLOR_ONLY:
            labels = torch.full_like(labels, FREE)
    elif conditions not in (None, DIGIT_ONLY):
        raise UserInputError("only a model conditioned on digit and color can be asked for a color")
    return labels, colors


def _evaluate_setting(
    pipeline: DiffusionPipeline,
    num_samples: int,
    batch_size: int,
    num_inference_steps: int,
    guidance_scale: float | None,
    seed: int,
    context: EvaluationContext,
    progress: bool,
    conditions: str | None,
) -> dict[str, Any]:
    labels, colors = requested_labels(pipeline, num_samples, seed, conditions)
    if not takes_guidance(pipeline):
        guidance_scale = None
    elif guidance_scale is None:
        guidance_scale = default_guidance_scale(pipeline)
    images, seconds = generate(
        pipeline, num_samples, num_inference_steps, seed, batch_size, labels, colors, guidance_scale, progress
    )
    row: dict[str, Any] = {
        "scheduler": scheduler_name(pipeline.scheduler) or type(pipeline.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "samples_per_second": num_samples / max(seconds, 1e-9),
    }
    if colors is not None:
        row["conditions"] = conditions or BOTH
    if context.digits:
        row.update(digit_metrics(images, context, labels, colors))
    row.update(extra_metrics(images, context))
    return row


def check_step_counts(pipeline: DiffusionPipeline, schedulers: Sequence[str | None], steps: Sequence[int]) -> None:
    """Refuse, before any sampling, a step count that a sampler does not take (none takes more than the
    training schedule's T steps); a scheduler name None is the pipeline's own."""
    for num_steps in steps:
        check_step_count(pipeline, num_steps, "--steps")
    config = pipeline.scheduler.config
    for name in schedulers:
        scheduler = make_scheduler(name, config) if name is not None else type(pipeline.scheduler).from_config(config)
        for num_steps in steps:
            try:
                scheduler.set_timesteps(num_steps)
            except ValueError as error:
                raise UserInputError(f"{name or 'the saved scheduler'} at {num_steps} steps: {error}") from None


def sweep(
    pipeline: DiffusionPipeline,
    schedulers: Sequence[str | None] = (PROTOCOL_SCHEDULER,),
    steps: Sequence[int] | None = None,
    guidance_scales: Sequence[float | None] = (None,),
    num_samples: int = PROTOCOL_SAMPLES,
    batch_size: int = PROTOCOL_BATCH_SIZE,
    seed: int = 0,
    context: EvaluationContext | None = None,
    progress: bool = True,
    conditions: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One `evaluate_pipeline` row per (scheduler, steps, guidance, conditions) combination, all with the same
    seed; guidance is ignored (a single row per scheduler and steps) for pipelines without any. `steps` None
    is the protocol's (`protocol_steps`); `conditions` None is every one of CONDITIONS for a model conditioned
    on digit and color, and ignored for others."""
    steps = [protocol_steps(pipeline)] if steps is None else steps
    check_step_counts(pipeline, schedulers, steps)
    context = context or make_context(pipeline)
    guidance_scales = guidance_scales if takes_guidance(pipeline) else (None,)
    conditions = (conditions or CONDITIONS) if takes_color_labels(pipeline) else (None,)
    rows = []
    for scheduler in schedulers:
        for num_steps in steps:
            for guidance in guidance_scales:
                for requested in conditions:
                    row = evaluate_pipeline(
                        pipeline,
                        num_samples,
                        batch_size,
                        scheduler,
                        num_steps,
                        guidance,
                        seed,
                        context=context,
                        progress=progress,
                        conditions=requested,
                    )
                    rows.append(row)
                    if progress:
                        print(format_table([row], header=len(rows) == 1, like=rows[:1]), flush=True)
    return rows

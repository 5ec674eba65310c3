"""What a loaded pipeline takes: class labels, a guidance weight, named classes, a step callback.

ddpm-zoo's pipelines, their Hub remote-code copies and diffusers' own pipelines are told apart by their
call signature and config, never by class, so every loading route answers the same.
"""

import inspect

from diffusers import DiffusionPipeline


def call_parameters(pipeline: DiffusionPipeline) -> dict[str, inspect.Parameter]:
    """The parameters of the pipeline's `__call__`, by name."""
    return dict(inspect.signature(pipeline.__call__).parameters)


def is_conditional(pipeline: DiffusionPipeline) -> bool:
    """Whether the pipeline takes `class_labels` (ddpm-zoo's ClassConditionalDDPMPipeline and the like)."""
    return "class_labels" in call_parameters(pipeline)


def takes_color_labels(pipeline: DiffusionPipeline) -> bool:
    """Whether the pipeline takes `color_labels`: a model conditioned on digit and color (`num_colors` > 0),
    or another pipeline whose call has that parameter and no `num_colors`."""
    if "color_labels" not in call_parameters(pipeline):
        return False
    return bool(getattr(pipeline, "num_colors", True))


def has_named_classes(pipeline: DiffusionPipeline) -> bool:
    """True for ddpm-zoo's class-conditional pipeline (also when loaded as Hub remote code), whose
    `class_index`, `labels` and `num_classes` turn names into indices and back; a generic pipeline that
    merely takes `class_labels` (`is_conditional`) has none of these."""
    return hasattr(pipeline, "encode_class_labels")


def num_classes(pipeline: DiffusionPipeline) -> int:
    """Number of real classes of a class-conditional pipeline (the null class excluded)."""
    count = getattr(pipeline, "num_classes", None)
    return int(count) if count is not None else int(pipeline.unet.config.num_class_embeds) - 1


def is_self_guided(pipeline: DiffusionPipeline) -> bool:
    """Whether an unconditional pipeline samples with classifier-free guidance over k-means clusters."""
    return pipeline.config.get("cluster_sizes") is not None


def takes_guidance(pipeline: DiffusionPipeline) -> bool:
    """Whether a guidance weight applies: classifier-free guidance (class-conditional), autoguidance (an
    unconditional pipeline with a `guide_unet`) or self-guidance (one with `cluster_sizes`)."""
    if "guidance_scale" not in call_parameters(pipeline):
        return False
    return is_conditional(pipeline) or getattr(pipeline, "guide_unet", None) is not None or is_self_guided(pipeline)


def default_guidance_scale(pipeline: DiffusionPipeline) -> float | None:
    """The weight the pipeline uses when none is given; None where no guidance applies."""
    if not takes_guidance(pipeline):
        return None
    if is_conditional(pipeline):
        return call_parameters(pipeline)["guidance_scale"].default
    return float(
        pipeline.config.self_guidance_scale if is_self_guided(pipeline) else pipeline.config.autoguidance_scale
    )


def supports_step_callback(pipeline: DiffusionPipeline) -> bool:
    """Whether the pipeline calls `callback_on_step_end` after each denoising step."""
    return "callback_on_step_end" in call_parameters(pipeline)


def num_train_timesteps(pipeline: DiffusionPipeline) -> int:
    """T, the length of the noise schedule the model was trained on."""
    return int(pipeline.scheduler.config.num_train_timesteps)

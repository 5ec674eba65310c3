"""Samplers by name: any of these diffusers schedulers can replace a pipeline's `DDPMScheduler`."""

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from ddpm_zoo.errors import UserInputError

# The fast samplers get "trailing" timestep spacing explicitly, so they start at t = T - 1 (Lin et al., 2023)
# whether the config comes from a fresh scheduler or from a saved DDPM config with "leading" spacing.
FAST = {"timestep_spacing": "trailing"}
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, FAST),
    "dpmsolver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, **FAST}),
    "euler": (EulerDiscreteScheduler, FAST),
    "unipc": (UniPCMultistepScheduler, FAST),
}


def make_scheduler(name: str, config) -> SchedulerMixin:
    """Build scheduler `name` from a training scheduler's config (same betas, prediction type).

    Where the training config clips the predicted x_0 to [-1, 1] (DDPM's `clip_sample`), the multistep
    solvers get the same bound through their `thresholding` (Saharia et al., 2022): without it their
    x_0 estimate at t near T, divided by sqrt(abar_T) ~ 0.006, saturates pixel-space samples. With
    `sample_max_value` 1 dynamic thresholding is exactly that clip; for another range it would rescale
    x_0 into [-1, 1] instead of clipping it, so such configs keep the solvers' own unbounded update.
    """
    try:
        scheduler_class, overrides = SCHEDULERS[name]
    except KeyError:
        raise UserInputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}") from None
    clips_to_unit_range = config.get("clip_sample", False) and config.get("clip_sample_range", 1.0) == 1
    if name in ("dpmsolver", "unipc") and clips_to_unit_range:
        overrides = {**overrides, "thresholding": True, "sample_max_value": 1.0}
    return scheduler_class.from_config(config, **overrides)


def scheduler_name(scheduler: SchedulerMixin) -> str | None:
    """The `make_scheduler` name of a scheduler instance ('ddpm', 'ddim', ...); None for other classes."""
    return next((name for name, (cls, _) in SCHEDULERS.items() if type(scheduler) is cls), None)

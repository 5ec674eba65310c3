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

SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict]] = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmsolver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler": (EulerDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}


def make_scheduler(name: str, config) -> SchedulerMixin:
    """Build scheduler `name` from a training scheduler's config (same betas, prediction type)."""
    try:
        scheduler_class, overrides = SCHEDULERS[name]
    except KeyError:
        raise UserInputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}") from None
    return scheduler_class.from_config(config, **overrides)

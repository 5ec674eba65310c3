"""Samplers by name: any of these diffusers schedulers can replace a pipeline's `DDPMScheduler`."""

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

from ddpm_zoo.errors import UserInputError

SCHEDULERS: dict[str, type[SchedulerMixin]] = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "dpmsolver": DPMSolverMultistepScheduler,
    "dpmsolver-sde": DPMSolverSDEScheduler,
    "dpmsolver-singlestep": DPMSolverSinglestepScheduler,
    "unipc": UniPCMultistepScheduler,
    "deis": DEISMultistepScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-ancestral": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    "lms": LMSDiscreteScheduler,
    "pndm": PNDMScheduler,
}


def make_scheduler(name: str, config) -> SchedulerMixin:
    """Build scheduler `name` the plain diffusers way, `SchedulerClass.from_config(config)`: it inherits the
    training schedule, prediction type, timestep spacing and x_0 bound that the saved config carries."""
    try:
        scheduler_class = SCHEDULERS[name]
    except KeyError:
        raise UserInputError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)}") from None
    try:
        return scheduler_class.from_config(config)
    except ImportError as error:  # diffusers' stand-in for a scheduler whose optional dependency is missing
        needs = "torchsde" if name == "dpmsolver-sde" else "scipy"
        raise UserInputError(f"scheduler {name!r} needs {needs}: pip install {needs}") from error


def scheduler_name(scheduler: SchedulerMixin) -> str | None:
    """The `make_scheduler` name of a scheduler instance ('ddpm', 'ddim', ...); None for other classes."""
    return next((name for name, cls in SCHEDULERS.items() if type(scheduler) is cls), None)

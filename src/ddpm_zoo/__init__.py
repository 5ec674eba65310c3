"""ddpm-zoo: train, evaluate and publish small and mid-size DDPMs with diffusers and Accelerate."""

from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline

__version__ = "0.1.0"

__all__ = ["ClassConditionalDDPMPipeline", "UnconditionalDDPMPipeline", "__version__"]

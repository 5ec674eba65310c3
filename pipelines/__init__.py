"""The DiffusionPipeline subclasses that ddpm-zoo saves and publishes (see ``pipeline_ddpm_zoo.py``)."""

from pathlib import Path

from .pipeline_ddpm_zoo import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline

PIPELINE_SOURCE_FILE = Path(__file__).with_name("pipeline_ddpm_zoo.py")

__all__ = ["ClassConditionalDDPMPipeline", "PIPELINE_SOURCE_FILE", "UnconditionalDDPMPipeline"]

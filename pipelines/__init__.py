"""The DiffusionPipeline subclasses that ddpm-zoo saves and publishes (see ``pipeline_ddpm_zoo.py`` and
``pipeline_points.py``)."""

from pathlib import Path

from diffusers import DiffusionPipeline

from .pipeline_ddpm_zoo import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline, joint_label_index
from .pipeline_points import PointDiffusionPipeline, PointPipelineOutput

PIPELINE_SOURCE_FILE = Path(__file__).with_name("pipeline_ddpm_zoo.py")
POINTS_SOURCE_FILE = Path(__file__).with_name("pipeline_points.py")


def pipeline_source_file(pipeline: DiffusionPipeline) -> Path:
    """The self-contained file that defines `pipeline`'s class, uploaded as its folder's pipeline.py."""
    return POINTS_SOURCE_FILE if isinstance(pipeline, PointDiffusionPipeline) else PIPELINE_SOURCE_FILE


__all__ = [
    "ClassConditionalDDPMPipeline",
    "PIPELINE_SOURCE_FILE",
    "POINTS_SOURCE_FILE",
    "PointDiffusionPipeline",
    "PointPipelineOutput",
    "UnconditionalDDPMPipeline",
    "joint_label_index",
    "pipeline_source_file",
]

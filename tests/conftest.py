"""Shared test fixtures: test-sized models (a few thousand parameters, 8-16 px)."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel


def tiny_unet(channels: int = 1, size: int = 8, num_class_embeds: int | None = None) -> UNet2DModel:
    """A ~45k-parameter UNet2DModel: two levels, attention at the lower one."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=num_class_embeds,
    )


@pytest.fixture
def tiny_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")

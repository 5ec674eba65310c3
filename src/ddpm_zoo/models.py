# Copyright 2026 The ddpm-zoo authors. Licensed under the Apache License, Version 2.0.
"""Networks other than `UNet2DModel`, as diffusers models (`ModelMixin` + `ConfigMixin`).

`PointDenoiser` is the 2-D toy's network: an MLP on points in the plane, the kind of network Sohl-Dickstein
et al. (2015, Sec. 3.1) trained on the swiss roll. It takes and returns what `UNet2DModel` does
(`sample`, `timestep`, `class_labels`; an output with `.sample`), so the training loop, the objectives and
diffusers' schedulers need no special case for it.

This file is self-contained: it imports only torch and diffusers, and a saved pipeline carries a verbatim copy
in its model's folder, so plain diffusers loads the model with `trust_remote_code=True`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn


@dataclass
class PointDenoiserOutput(BaseOutput):
    """The network's prediction, (N, out_channels)."""

    sample: torch.Tensor


class ResidualBlock(nn.Module):
    """h + W2 silu(W1 silu(LayerNorm(h)) + E e): a pre-norm residual MLP block with the embedding e of the
    timestep (and class) added between its two layers, as a UNet's ResNet block adds it."""

    def __init__(self, hidden_size: int, embedding_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.linear_1 = nn.Linear(hidden_size, hidden_size)
        self.embedding = nn.Linear(embedding_dim, hidden_size)
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        inner = self.linear_1(F.silu(self.norm(hidden))) + self.embedding(embedding)
        return hidden + self.linear_2(F.silu(inner))


class PointDenoiser(ModelMixin, ConfigMixin):
    r"""
    An MLP that predicts the noise (or `v`, or the clean sample) of noisy 2-D points.

    Parameters:
        in_channels (`int`, defaults to 2): coordinates of a point.
        out_channels (`int`, defaults to 2): outputs per point; twice `in_channels` for a learned variance
            (diffusers' `variance_type="learned_range"`: the mean, then the variance interpolation).
        hidden_size (`int`, defaults to 128): width of the residual blocks.
        num_blocks (`int`, defaults to 3): residual blocks.
        time_embedding_dim (`int`, defaults to 32): size of the sinusoidal timestep embedding (Vaswani et al.,
            2017, Sec. 3.5, as DDPM's UNet embeds t), which an MLP maps to `hidden_size`.
        num_class_embeds (`int`, *optional*): class embeddings for a conditional model, the last of which is
            the null class of classifier-free guidance (Ho & Salimans, 2022).
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 2,
        out_channels: int = 2,
        hidden_size: int = 128,
        num_blocks: int = 3,
        time_embedding_dim: int = 32,
        num_class_embeds: int | None = None,
    ):
        super().__init__()
        self.time_embedding = nn.Sequential(
            nn.Linear(time_embedding_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.class_embedding = nn.Embedding(num_class_embeds, hidden_size) if num_class_embeds else None
        self.input = nn.Linear(in_channels, hidden_size)
        self.blocks = nn.ModuleList(ResidualBlock(hidden_size, hidden_size) for _ in range(num_blocks))
        self.output_norm = nn.LayerNorm(hidden_size)
        self.output = nn.Linear(hidden_size, out_channels)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> PointDenoiserOutput | tuple:
        """Predict for points `sample` (N, in_channels) at `timestep` (one for all, or one per point; fractional
        timesteps are fine), conditioned on `class_labels` (N,) where the model has class embeddings."""
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(sample.shape[0]) if timesteps.numel() == 1 else timesteps
        sinusoid = get_timestep_embedding(timesteps, self.config.time_embedding_dim, flip_sin_to_cos=True)
        embedding = self.time_embedding(sinusoid.to(self.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                raise ValueError("class_labels should be provided when doing class conditioning")
            embedding = embedding + self.class_embedding(class_labels).to(self.dtype)
        hidden = self.input(sample.to(self.dtype))
        for block in self.blocks:
            hidden = block(hidden, F.silu(embedding))
        prediction = self.output(F.silu(self.output_norm(hidden)))
        if not return_dict:
            return (prediction,)
        return PointDenoiserOutput(sample=prediction)

# Copyright 2026 The ddpm-zoo authors. Licensed under the Apache License, Version 2.0.
"""A diffusion pipeline for 2-D points (the toy of Sohl-Dickstein et al., 2015), for any diffusers scheduler.

`PointDiffusionPipeline` runs the reverse process (Ho et al., 2020, Algorithm 2) with a point denoiser (an MLP
that takes what `UNet2DModel` takes), unconditionally or with classifier-free guidance (Ho & Salimans, 2022).
Points are not bounded to [-1, 1], so nothing is clipped: the saved scheduler config says `clip_sample=False`,
and a scheduler swapped in with `from_config` inherits that.

This file is self-contained: it imports only torch and diffusers, and is uploaded verbatim to each Hub repo as
``pipeline.py``; the denoiser's own file travels in its folder, so ``DiffusionPipeline.from_pretrained(repo,
trust_remote_code=True)`` works without ddpm-zoo installed.
"""

import inspect
import json
import math
import numbers
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ModelMixin, SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

LIBRARIES = ("diffusers", "transformers")


@dataclass
class PointPipelineOutput(BaseOutput):
    """Generated points, (N, 2): a NumPy array (`output_type="np"`) or a tensor (`"pt"`)."""

    points: np.ndarray | torch.Tensor


class PointDiffusionPipeline(DiffusionPipeline):
    r"""
    Pipeline for 2-D points, unconditional or class-conditional with classifier-free guidance.

    Parameters:
        denoiser ([`ModelMixin`]): predicts the noise (or `v`, or the clean points) of noisy points (N, 2) at a
            timestep, like `UNet2DModel`; a conditional one has `num_class_embeds = num_classes + 1` (the last is
            the null class).
        scheduler ([`SchedulerMixin`]): any diffusers scheduler for the same noise schedule, e.g. `DDPMScheduler`,
            `DDIMScheduler` or `DPMSolverMultistepScheduler` via `from_config`.
        class_names (`str`, *optional*): the classes' names, comma-separated in index order, so that
            `class_labels` may name them.
    """

    model_cpu_offload_seq = "denoiser"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, denoiser: ModelMixin, scheduler: SchedulerMixin, class_names: str | None = None):
        super().__init__()
        if class_names is not None and not isinstance(class_names, str):
            raise ValueError(f"`class_names` must be one comma-separated string, got {class_names!r}.")
        self.register_modules(denoiser=denoiser, scheduler=scheduler)
        self.register_to_config(class_names=class_names)

    @property
    def num_classes(self) -> int:
        """Number of real classes (0 for an unconditional denoiser); the null class index equals it."""
        num_class_embeds = getattr(self.denoiser.config, "num_class_embeds", None)
        return num_class_embeds - 1 if num_class_embeds else 0

    @property
    def labels(self) -> list[str]:
        """The class names in index order (empty when the model has none)."""
        return [name.strip() for name in self.config.class_names.split(",")] if self.config.class_names else []

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """diffusers' `save_pretrained`, plus the source file of each model class that is not diffusers' own,
        copied into that model's folder and named in `model_index.json` as [file, class], so the folder loads
        with `trust_remote_code=True` wherever that class is not installed."""
        super().save_pretrained(save_directory, *args, **kwargs)
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path, encoding="utf-8") as handle:
            index = json.load(handle)
        for name, component in self.components.items():
            entry = index.get(name)
            if not isinstance(component, ModelMixin) or not entry or entry[0].split(".")[0] in LIBRARIES:
                continue
            source = inspect.getsourcefile(type(component))
            module = os.path.splitext(os.path.basename(source))[0]
            shutil.copyfile(source, os.path.join(save_directory, name, f"{module}.py"))
            index[name] = [module, type(component).__name__]
        with open(index_path, "w", encoding="utf-8") as handle:
            json.dump(index, handle, indent=2, sort_keys=True)
            handle.write("\n")

    def class_index(self, label: int | str) -> int:
        """One label -> its class index: an int in range, or a class name (any case)."""
        if isinstance(label, str):
            names = [name.lower() for name in self.labels]
            if label.strip().lower() not in names:
                known = ", ".join(self.labels) if self.labels else "none (use integers)"
                raise ValueError(f"Unknown class name {label!r}; this model's class names: {known}.")
            return names.index(label.strip().lower())
        if not _is_integer(label) or not 0 <= label < self.num_classes:
            raise ValueError(f"Class label {label!r} is outside this model's classes 0..{self.num_classes - 1}.")
        return int(label)

    def encode_class_labels(
        self, class_labels: int | str | list[int | str] | torch.Tensor | None, batch_size: int | None
    ) -> tuple[torch.Tensor | None, int]:
        """(class indices or None, number of points): a single label is repeated `batch_size` times (default
        1000), a list gives one point per label."""
        if class_labels is None:
            count = 1000 if batch_size is None else batch_size
            if not _is_integer(count) or count < 1:
                raise ValueError(f"`batch_size` must be a positive integer, got {count!r}.")
            return None, int(count)
        if not self.num_classes:
            raise ValueError("This denoiser has no class embeddings; call the pipeline without `class_labels`.")
        if isinstance(class_labels, torch.Tensor):
            class_labels = class_labels.flatten().tolist()
        if isinstance(class_labels, (str, numbers.Number)):
            class_labels = [class_labels] * (1000 if batch_size is None else batch_size)
        elif batch_size is not None and batch_size != len(class_labels):
            raise ValueError(f"`batch_size` {batch_size} differs from the {len(class_labels)} `class_labels` given.")
        indices = [self.class_index(label) for label in class_labels]
        if not indices:
            raise ValueError("`class_labels` must name at least one class.")
        return torch.tensor(indices, device=self._execution_device, dtype=torch.long), len(indices)

    def resolve_num_inference_steps(self, num_inference_steps: int | None) -> int:
        """None -> every training timestep for `DDPMScheduler` (ancestral sampling, Algorithm 2), else 50; never
        more than the model's training timesteps T."""
        num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if num_inference_steps is None:
            return num_train_timesteps if isinstance(self.scheduler, DDPMScheduler) else min(50, num_train_timesteps)
        if not _is_integer(num_inference_steps) or not 1 <= num_inference_steps <= num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps` must be an integer in 1..{num_train_timesteps}, got {num_inference_steps!r}."
            )
        return int(num_inference_steps)

    def predict(
        self, model_input: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float
    ) -> torch.Tensor:
        """The denoiser's prediction; with labels, classifier-free guidance (Ho & Salimans, 2022, eq. 6 with
        w_paper = w - 1): eps(x, null) + w (eps(x, c) - eps(x, null)), both in one batched call (w = 1: the
        conditional call alone). Without labels, a conditional denoiser sees the null class."""
        if labels is None:
            null = torch.full((len(model_input),), self.num_classes, device=model_input.device, dtype=torch.long)
            return self.denoiser(model_input, t, class_labels=null if self.num_classes else None).sample
        if guidance_scale == 1:
            return self.denoiser(model_input, t, class_labels=labels).sample
        null = torch.full_like(labels, self.num_classes)
        both = self.denoiser(torch.cat([model_input, model_input]), t, class_labels=torch.cat([labels, null])).sample
        conditional, unconditional = both.chunk(2)
        channels = model_input.shape[1]
        mean = unconditional[:, :channels] + guidance_scale * (conditional[:, :channels] - unconditional[:, :channels])
        return torch.cat([mean, conditional[:, channels:]], dim=1)

    def scheduler_output(self, model_output: torch.Tensor, channels: int) -> torch.Tensor:
        """A learned-variance output (2C values) whole for a `DDPMScheduler` configured to read it (Improved DDPM
        eq. 15), its mean half for every other scheduler."""
        reads_variance = self.scheduler.config.get("variance_type") in ("learned", "learned_range")
        if model_output.shape[1] == channels or (isinstance(self.scheduler, DDPMScheduler) and reads_variance):
            return model_output
        return model_output[:, :channels]

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        class_labels: int | str | list[int | str] | torch.Tensor | None = None,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Callable[["PointDiffusionPipeline", int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        eta: float = 0.0,
    ) -> PointPipelineOutput | tuple:
        r"""
        Generate points by running the reverse process from x_T ~ N(0, I).

        Args:
            batch_size (`int`, *optional*): number of points (default 1000, or one per entry of `class_labels`).
            class_labels (`int`, `str`, `list` or `torch.Tensor`, *optional*): the class of each point, as indices
                or names; one label is repeated `batch_size` times. None samples the unconditional model.
            guidance_scale (`float`, defaults to 3.0): classifier-free guidance weight `w >= 0` with
                `class_labels`: 1 is conditional sampling, 0 ignores the label.
            generator (`torch.Generator`, *optional*): one, or one per point, for deterministic sampling.
            num_inference_steps (`int`, *optional*): denoising steps, at most the training timesteps T; defaults
                to T with `DDPMScheduler` and to 50 with any other scheduler.
            output_type (`str`, defaults to `"np"`): `"np"` (a float32 array) or `"pt"` (a tensor), (N, 2).
            return_dict (`bool`, defaults to `True`): return a `PointPipelineOutput` or a tuple.
            callback_on_step_end (`Callable`, *optional*): called as `callback_on_step_end(self, i, t,
                callback_kwargs)` after each step; may return a dict with a replacement `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): only `"latents"` is available.
            eta (`float`, defaults to 0.0): DDIM's eta in [0, 1]; other schedulers ignore it.

        Returns:
            [`PointPipelineOutput`] or `tuple`: the generated points.
        """
        labels, count = self.encode_class_labels(class_labels, batch_size)
        if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}.")
        if output_type not in ("np", "pt"):
            raise ValueError(f"`output_type` must be 'np' or 'pt' for points, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) not in (1, count):
            raise ValueError(f"Pass one generator or one per point ({count}), got {len(generator)}.")
        generator = generator[0] if isinstance(generator, list) and len(generator) == 1 else generator
        if set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs):
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}.")
        if not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:
            raise ValueError(f"`eta` must be a number in [0, 1], got {eta!r}.")

        self.scheduler.set_timesteps(self.resolve_num_inference_steps(num_inference_steps), self._execution_device)
        channels = self.denoiser.config.in_channels
        latents = randn_tensor(
            (count, channels), generator=generator, device=self._execution_device, dtype=self.denoiser.dtype
        )
        latents = latents * self.scheduler.init_noise_sigma
        accepted = inspect.signature(self.scheduler.step).parameters
        extra = {"eta": float(eta)} if "eta" in accepted else {}
        extra |= {"generator": generator} if "generator" in accepted else {}
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self.scheduler_output(self.predict(model_input, t, labels, guidance_scale), channels)
            latents = self.scheduler.step(model_output, t, latents, **extra).prev_sample
            if callback_on_step_end is not None:
                names = callback_on_step_end_tensor_inputs or ["latents"]
                latents = callback_on_step_end(self, i, t, {name: latents for name in names}).pop("latents", latents)

        points = latents.float() if output_type == "pt" else latents.float().cpu().numpy()
        self.maybe_free_model_hooks()
        if not return_dict:
            return (points,)
        return PointPipelineOutput(points=points)


def _is_integer(value) -> bool:
    """True for Python and NumPy integers, False for bools, floats and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

# Copyright 2026 The ddpm-zoo authors. Licensed under the Apache License, Version 2.0.
"""DDPM pipelines (Ho et al., 2020) for any diffusers scheduler, with classifier-free guidance.

`UnconditionalDDPMPipeline` samples an unconditional `UNet2DModel`, optionally autoguided or self-guided
over k-means clusters of its training images; `ClassConditionalDDPMPipeline` samples a class-embedded one
with classifier-free guidance (Ho & Salimans, 2022).

This file is self-contained: it imports only torch and diffusers, and is uploaded verbatim to
each Hub repo as ``pipeline.py`` so that ``DiffusionPipeline.from_pretrained(repo,
trust_remote_code=True)`` works without ddpm-zoo installed.
"""

import inspect
import math
import numbers
from collections.abc import Callable

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DModel
from diffusers.utils.torch_utils import randn_tensor


class DDPMPipelineBase(DiffusionPipeline):
    """The reverse process shared by ddpm-zoo's pipelines: latents, scheduler steps, post-processing."""

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    @classmethod
    def _dict_from_json_file(cls, json_file):
        """A saved folder names its class as ["pipeline", "<Class>"], so that plain diffusers runs its pipeline.py.
        Called on this class, which is that code, diffusers reads the class name alone and loads the folder into
        this class: no `trust_remote_code`, and the folder's copy of this file never runs."""
        config = super()._dict_from_json_file(json_file)
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = config["_class_name"][-1]
        return config

    def prepare_latents(
        self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None
    ) -> torch.Tensor:
        """Draw x_T ~ N(0, I), scaled by the scheduler's initial sigma (Algorithm 2, line 1)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        shape = (batch_size, self.unet.config.in_channels, height, width)
        latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None, eta: float) -> dict:
        """Pass `eta` to DDIM and `generator` to schedulers whose `step` draws noise (DDPM, DDIM with eta > 0,
        Euler...); other schedulers take neither."""
        accepted = inspect.signature(self.scheduler.step).parameters
        extra = {"eta": eta} if "eta" in accepted else {}
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    def postprocess(self, images: torch.Tensor, output_type: str):
        """Map model space [-1, 1] to [0, 1] and convert to `output_type`."""
        images = (images / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return images
        images = images.cpu().permute(0, 2, 3, 1).float().numpy()
        if output_type == "np":
            return images
        return self.numpy_to_pil(images)

    def check_common_inputs(
        self,
        batch_size: int,
        generator: torch.Generator | list[torch.Generator] | None,
        output_type: str,
        tensor_inputs: list[str] | None,
    ) -> torch.Generator | list[torch.Generator] | None:
        """Reject a batch size below 1, a list of generators of another length than the batch, an unknown
        output type or callback tensor; return `generator`, a list of one unwrapped."""
        if not _is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        if isinstance(generator, list) and len(generator) == 1:
            generator = generator[0]
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"You have passed a list of generators of length {len(generator)}, but requested an effective "
                f"batch size of {batch_size}. Make sure the batch size matches the length of the generators."
            )
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"`output_type` must be 'pil', 'np' or 'pt', got {output_type!r}.")
        unknown = set(tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}.")
        return generator

    def resolve_num_inference_steps(self, num_inference_steps: int | None) -> int:
        """None -> every training timestep for `DDPMScheduler` (ancestral sampling, Algorithm 2), else 50 (the
        usual count of diffusers' DDIM pipeline), never more than the model's training timesteps T."""
        num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if num_inference_steps is None:
            if isinstance(self.scheduler, DDPMScheduler):
                return num_train_timesteps
            return min(50, num_train_timesteps)
        if not _is_integer(num_inference_steps) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be a positive integer, got {num_inference_steps!r}.")
        if num_inference_steps > num_train_timesteps:
            raise ValueError(
                f"`num_inference_steps` {num_inference_steps} exceeds the {num_train_timesteps} timesteps this "
                "model was trained with."
            )
        return int(num_inference_steps)

    def alpha_bar(self, timestep: torch.Tensor) -> torch.Tensor | None:
        """abar_t of the training schedule at a (possibly fractional) timestep, or None for a scheduler that
        does not carry `alphas_cumprod`. Between integer timesteps sigma_t = sqrt((1 - abar_t) / abar_t) is
        interpolated linearly, as `EulerDiscreteScheduler` places its fractional timesteps."""
        alphas_cumprod = getattr(self.scheduler, "alphas_cumprod", None)
        if alphas_cumprod is None:
            return None
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()
        t = min(max(float(timestep), 0.0), len(alphas_cumprod) - 1.0)
        low = int(math.floor(t))
        high = min(low + 1, len(alphas_cumprod) - 1)
        sigmas = ((1 - alphas_cumprod[[low, high]]) / alphas_cumprod[[low, high]]).sqrt()
        sigma = sigmas[0] + (t - low) * (sigmas[1] - sigmas[0])
        return 1 / (1 + sigma**2)

    def scheduler_output(self, model_output: torch.Tensor, channels: int) -> torch.Tensor:
        """What the scheduler steps with: a learned-variance output (2C channels) whole for a `DDPMScheduler`
        configured to read it (Improved DDPM eq. 15), its mean half for every other scheduler."""
        if model_output.shape[1] == channels:
            return model_output
        reads_variance = self.scheduler.config.get("variance_type") in ("learned", "learned_range")
        if isinstance(self.scheduler, DDPMScheduler) and reads_variance:
            return model_output
        return model_output[:, :channels]

    def keep_in_range(self, model_output: torch.Tensor, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Bound the x_0 that `model_output` implies at x_t = `sample` the way the saved scheduler config asks
        (`thresholding`: dynamic thresholding, Saharia et al., 2022, Sec. 2.3; else `clip_sample`: clipping
        to [-r, r], DDPM's sampler), then re-express it in the model's prediction type from the same x_t.

        Every scheduler then steps with an x_0 and a noise estimate that agree (DDPM eq. 4), whichever
        scheduler was swapped in: DDIM's own clipping, for one, keeps the unclipped noise estimate, so a
        guided x_0 outside the data range drives its update apart. An in-range x_0 is left unchanged, and a
        config that bounds nothing (Gaussian data, `clip_sample=False`) leaves every prediction unchanged.
        """
        config = self.scheduler.config
        thresholding = bool(config.get("thresholding", False))
        if not thresholding and not config.get("clip_sample", False):
            return model_output
        alpha_bar = self.alpha_bar(t)
        prediction_type = config.get("prediction_type", "epsilon")
        if alpha_bar is None or prediction_type not in ("epsilon", "v_prediction", "sample"):
            return model_output
        channels = sample.shape[1]
        variance = model_output[:, channels:]
        dtype, model_output = model_output.dtype, model_output[:, :channels]
        x_0 = predicted_original_sample(model_output.float(), sample.float(), float(alpha_bar), prediction_type)
        if thresholding:
            bounded = dynamic_threshold(
                x_0, float(config.get("dynamic_thresholding_ratio", 0.995)), float(config.get("sample_max_value", 1))
            )
        else:
            limit = float(config.get("clip_sample_range", 1.0))
            bounded = x_0.clamp(-limit, limit)
        if not torch.equal(bounded, x_0):
            kept = prediction_from_original_sample(bounded, sample.float(), float(alpha_bar), prediction_type)
            model_output = kept.to(dtype)
        return torch.cat([model_output, variance], dim=1) if variance.shape[1] else model_output

    def run_reverse_process(
        self,
        batch_size: int,
        predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        generator: torch.Generator | list[torch.Generator] | None,
        num_inference_steps: int | None,
        output_type: str,
        return_dict: bool,
        callback_on_step_end: Callable | None,
        callback_on_step_end_tensor_inputs: list[str] | None,
        eta: float,
    ) -> ImagePipelineOutput | tuple:
        """Algorithm 2: from x_T ~ N(0, I), step x_t -> x_{t-1} with the scheduler until x_0."""
        if not isinstance(eta, numbers.Real) or isinstance(eta, bool) or not 0 <= eta <= 1:
            raise ValueError(f"`eta` must be a number in [0, 1], got {eta!r}.")
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        num_inference_steps = self.resolve_num_inference_steps(num_inference_steps)
        # Timesteps first: `init_noise_sigma` of sigma-based schedulers (Euler...) depends on them.
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        latents = self.prepare_latents(batch_size, generator)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, float(eta))

        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            # Algorithm 2, line 4: the network's prediction at x_t (sigma schedulers rescale x_t first).
            model_input = self.scheduler.scale_model_input(latents, t)
            model_output = self.keep_in_range(predict(model_input, t), model_input, t)
            model_output = self.scheduler_output(model_output, latents.shape[1])
            latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample
            if callback_on_step_end is not None:
                callback_outputs = callback_on_step_end(self, i, t, {name: latents for name in tensor_inputs})
                latents = callback_outputs.pop("latents", latents)

        images = self.postprocess(latents, output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


class UnconditionalDDPMPipeline(DDPMPipelineBase):
    r"""
    Pipeline for unconditional image generation with a `UNet2DModel`, optionally autoguided or self-guided.

    Parameters:
        unet ([`UNet2DModel`]):
            A `UNet2DModel` that predicts the noise (or `v`, or the clean sample) of a noisy image. A
            self-guided model has `num_class_embeds = len(cluster_sizes) + 1` (the last is the null cluster).
        scheduler ([`SchedulerMixin`]):
            Any diffusers scheduler built for the same noise schedule, e.g. `DDPMScheduler`,
            `DDIMScheduler` or `DPMSolverMultistepScheduler` via `from_config`.
        guide_unet ([`UNet2DModel`], *optional*):
            A weaker version of `unet` for autoguidance (Karras et al., 2024), e.g. its EMA weights
            from early in training; the prediction is pushed away from the guide's.
        autoguidance_scale (`float`, defaults to 1.0):
            The autoguidance weight `__call__` uses by default; 1 (no guidance) without `guide_unet`.
        cluster_sizes (`list[int]`, *optional*):
            For self-guidance (Hu et al., 2023): the number of training images in each k-means cluster
            the UNet is conditioned on. Each image samples its cluster in proportion to these sizes and is
            steered towards it with classifier-free guidance.
        self_guidance_scale (`float`, defaults to 1.0):
            The self-guidance weight `__call__` uses by default.
    """

    model_cpu_offload_seq = "unet->guide_unet"
    _optional_components = ["guide_unet"]

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        guide_unet: UNet2DModel | None = None,
        autoguidance_scale: float = 1.0,
        cluster_sizes: list[int] | None = None,
        self_guidance_scale: float = 1.0,
    ):
        super().__init__()
        check_guidance_scale(autoguidance_scale)
        check_guidance_scale(self_guidance_scale)
        if cluster_sizes is not None:
            check_cluster_sizes(cluster_sizes, unet)
            if guide_unet is not None:
                raise ValueError("A pipeline is either autoguided (`guide_unet`) or self-guided (`cluster_sizes`).")
        elif guide_unet is None and autoguidance_scale != 1:
            raise ValueError(
                f"`autoguidance_scale` {autoguidance_scale!r} needs a `guide_unet`; without one it must be 1."
            )
        self.register_modules(unet=unet, scheduler=scheduler, guide_unet=guide_unet)
        self.register_to_config(
            autoguidance_scale=autoguidance_scale,
            cluster_sizes=None if cluster_sizes is None else [int(size) for size in cluster_sizes],
            self_guidance_scale=self_guidance_scale,
        )

    @property
    def self_guided(self) -> bool:
        """Whether the UNet is conditioned on k-means clusters of its training images."""
        return self.config.get("cluster_sizes") is not None

    @property
    def default_guidance_scale(self) -> float:
        """The guidance weight a call without `guidance_scale` uses."""
        return float(self.config.self_guidance_scale if self.self_guided else self.config.autoguidance_scale)

    def autoguided_prediction(self, model_input: torch.Tensor, t: torch.Tensor, guidance_scale: float) -> torch.Tensor:
        """Autoguidance (Karras et al., 2024, eq. 2): D_w(x) = D_guide(x) + w * (D(x) - D_guide(x)).

        The combination is affine with weights summing to 1, so it holds for an epsilon, v or x_0
        prediction alike. Scale 1 is the main network alone, one UNet call per step.
        """
        prediction = self.unet(model_input, t).sample
        if guidance_scale == 1:
            return prediction
        guide = self.guide_unet(model_input, t).sample
        return extrapolate(guide, prediction, guidance_scale, model_input.shape[1])

    def draw_clusters(self, batch_size: int, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
        """One cluster per image, drawn in proportion to the clusters' sizes (their share of the training
        images), so the mixture over clusters is the data distribution."""
        sizes = torch.tensor(self.config.cluster_sizes, dtype=torch.float64)
        if isinstance(generator, list):
            draws = [torch.multinomial(sizes.to(g.device), 1, generator=g).cpu() for g in generator]
            clusters = torch.cat(draws)
        else:
            device = generator.device if generator is not None else torch.device("cpu")
            clusters = torch.multinomial(sizes.to(device), batch_size, replacement=True, generator=generator)
        return clusters.to(self._execution_device)

    def resolve_guidance_scale(self, guidance_scale: float | None) -> float:
        """None -> the saved default; autoguidance at any scale but 1 needs a `guide_unet`."""
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        check_guidance_scale(guidance_scale)
        if guidance_scale != 1 and self.guide_unet is None and not self.self_guided:
            raise ValueError(
                f"`guidance_scale` {guidance_scale!r} needs a `guide_unet` for autoguidance; this pipeline has "
                "none, so only 1 is possible."
            )
        return float(guidance_scale)

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["UnconditionalDDPMPipeline", int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        guidance_scale: float | None = None,
        eta: float = 0.0,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate images by running the reverse process from pure noise.

        Args:
            batch_size (`int`, defaults to 1): number of images to generate.
            generator (`torch.Generator`, *optional*): makes generation deterministic.
            num_inference_steps (`int`, *optional*): number of denoising steps, at most the training
                timesteps T; defaults to T with `DDPMScheduler` and to 50 with any other scheduler.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"` (NHWC floats in [0, 1]) or
                `"pt"` (NCHW tensor in [0, 1]).
            return_dict (`bool`, defaults to `True`): return an `ImagePipelineOutput` or a tuple.
            callback_on_step_end (`Callable`, *optional*): called as
                `callback_on_step_end(self, i, t, callback_kwargs)` after each step; may return a dict
                with a replacement `latents`.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): the tensors passed in
                `callback_kwargs`; only `"latents"` is available.
            guidance_scale (`float`, *optional*): guidance weight `w >= 0`, defaulting to the pipeline's
                saved one. With autoguidance (needs `guide_unet`), 1 uses `unet` alone. With self-guidance,
                the classifier-free weight over clusters: 0 is the unguided network, 1 samples each
                drawn cluster without extra guidance.
            eta (`float`, defaults to 0.0): DDIM's eta in [0, 1] (Song et al., 2021, eq. 16): 0 is the
                deterministic DDIM sampler, 1 adds DDPM's posterior noise; other schedulers ignore it.

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the generated images.
        """
        generator = self.check_common_inputs(batch_size, generator, output_type, callback_on_step_end_tensor_inputs)
        guidance_scale = self.resolve_guidance_scale(guidance_scale)
        if self.self_guided:
            clusters = self.draw_clusters(batch_size, generator)
            null = len(self.config.cluster_sizes)

            def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return classifier_free_guidance(self.unet, model_input, t, clusters, null, guidance_scale)

        else:

            def predict(model_input: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.autoguided_prediction(model_input, t, guidance_scale)

        return self.run_reverse_process(
            batch_size,
            predict,
            generator,
            num_inference_steps,
            output_type,
            return_dict,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            eta,
        )


class ClassConditionalDDPMPipeline(DDPMPipelineBase):
    r"""
    Pipeline for class-conditional image generation with classifier-free guidance, on one label or two
    (a class and a color) composed (Liu et al., 2022).

    The UNet's own class embedding holds one row per combination of the labels, each with its null value
    appended: with one label, `num_class_embeds = num_classes + 1` (the last is the null class); with a class
    and a color, `(num_classes + 1) * (num_colors + 1)` rows, combination (c, k) at row
    `c * (num_colors + 1) + k`, where c = num_classes and k = num_colors are the null values that training
    substituted for each label some of the time. The same network thus gives every conditional and the
    unconditional prediction, and loads as a plain `UNet2DModel`.

    Parameters:
        unet ([`UNet2DModel`]): a class-embedded `UNet2DModel`.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler for the same noise schedule.
        class_names (`str`, *optional*): the classes' names, comma-separated in index order (e.g.
            `"zero,one,...,nine"`), so that `class_labels` may name them.
        color_names (`str`, *optional*): for a model conditioned on a second label (the color of colored
            digits), its values' names, comma-separated in index order (e.g. `"red,green,blue"`).
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        class_names: str | None = None,
        color_names: str | None = None,
    ):
        super().__init__()
        for name, value in (("class_names", class_names), ("color_names", color_names)):
            if value is not None and not isinstance(value, str):
                raise ValueError(f"`{name}` must be one comma-separated string, got {value!r}.")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(class_names=class_names, color_names=color_names)

    @property
    def num_colors(self) -> int:
        """Number of colors (values of the second label) the model takes; 0 for a single-label model."""
        return len(self.colors)

    @property
    def num_classes(self) -> int:
        """Number of real classes; the null class index equals this number."""
        num_class_embeds = getattr(self.unet.config, "num_class_embeds", None)
        rows_per_class = self.num_colors + 1
        if not num_class_embeds or num_class_embeds < 2 * rows_per_class or num_class_embeds % rows_per_class:
            needed = "one class plus the null class (2)"
            if self.num_colors:
                needed = f"(classes + 1) x {rows_per_class} for {self.num_colors} colors plus the null color"
            raise ValueError(
                f"This UNet has `num_class_embeds` {num_class_embeds!r}; classifier-free guidance needs {needed}. "
                "Use `UnconditionalDDPMPipeline` for an unconditional UNet."
            )
        return num_class_embeds // rows_per_class - 1

    @property
    def labels(self) -> list[str]:
        """The class names in index order (empty when the model has none)."""
        return _names(self.config.class_names)

    @property
    def colors(self) -> list[str]:
        """The color names in index order (empty for a single-label model)."""
        return _names(self.config.get("color_names"))

    def class_index(self, label: int | str) -> int:
        """One label -> its class index: an int in range, a class name (any case) or a decimal string."""
        return _label_index(label, self.labels, self.num_classes, "class")

    def color_index(self, color: int | str) -> int:
        """One color -> its index: an int in range, a color name (any case) or a decimal string."""
        if not self.num_colors:
            raise ValueError("This model is conditioned on the class alone; it takes no `color_labels`.")
        return _label_index(color, self.colors, self.num_colors, "color")

    def encode_class_labels(
        self, class_labels: int | str | list[int | str] | torch.Tensor, batch_size: int | None = None
    ) -> torch.Tensor:
        """Turn ints or class names into a tensor of class indices, checking each is in range; with
        `batch_size`, a single label is repeated that many times and a list must have that length. With
        colors, `None` leaves an image's class free (index -1)."""
        return self._encode(class_labels, batch_size, self.class_index, "class_labels", free=self.num_colors > 0)

    def encode_color_labels(
        self, color_labels: int | str | list[int | str | None] | torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """Color indices as `encode_class_labels` makes class indices, `None` (an entry, or the whole
        argument) leaving an image's color free (index -1)."""
        if color_labels is None:
            return torch.full((batch_size,), -1, device=self._execution_device, dtype=torch.long)
        return self._encode(color_labels, batch_size, self.color_index, "color_labels", free=True)

    def _encode(self, values, batch_size: int | None, index: Callable, name: str, free: bool) -> torch.Tensor:
        if isinstance(values, torch.Tensor):
            values = values.flatten().tolist()
        if values is None or isinstance(values, (str, numbers.Number)):
            values = [values]
        if not values:
            raise ValueError(f"`{name}` must name at least one {'class' if name == 'class_labels' else 'color'}.")
        if not free and any(value is None for value in values):
            raise ValueError(f"`{name}` may not be None: this model has no second label to sample by alone.")
        indices = [-1 if value is None else index(value) for value in values]
        if batch_size is not None:
            if not _is_integer(batch_size) or batch_size < 1:
                raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
            if len(indices) == 1:
                indices = indices * batch_size
            elif len(indices) != batch_size:
                raise ValueError(
                    f"`batch_size` {batch_size} differs from the {len(indices)} `{name}` given; pass one "
                    "label to repeat it, or one per image."
                )
        return torch.tensor(indices, device=self._execution_device, dtype=torch.long)

    def guided_prediction(
        self,
        model_input: torch.Tensor,
        t: torch.Tensor,
        labels: torch.Tensor,
        guidance_scale: float,
        colors: torch.Tensor | None = None,
        color_guidance_scale: float = 0.0,
    ) -> torch.Tensor:
        """Classifier-free guidance towards `labels` (see `classifier_free_guidance`); with colors, guidance
        composed along null -> class -> (class, color) (see `composable_guidance`):
        eps = eps(null) + w (eps(class) - eps(null)) + w_color (eps(class, color) - eps(class)),
        with a free label's null value in its place, so a free color drops the last term and a free class
        leaves eps(null) + w_color (eps(color) - eps(null))."""
        if not self.num_colors:
            return classifier_free_guidance(self.unet, model_input, t, labels, self.num_classes, guidance_scale)
        chain = [
            joint_label_index(None, None, self.num_classes, self.num_colors),
            joint_label_index(labels, None, self.num_classes, self.num_colors),
            joint_label_index(labels, colors, self.num_classes, self.num_colors),
        ]
        return composable_guidance(self.unet, model_input, t, chain, [guidance_scale, color_guidance_scale])

    @torch.no_grad()
    def __call__(
        self,
        class_labels: int | str | list[int | str | None] | torch.Tensor | None = 0,
        guidance_scale: float = 3.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[["ClassConditionalDDPMPipeline", int, int, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        batch_size: int | None = None,
        eta: float = 0.0,
        color_labels: int | str | list[int | str | None] | torch.Tensor | None = None,
        color_guidance_scale: float = 2.0,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Generate one image per entry of `class_labels` (and `color_labels`), or `batch_size` images of one.

        Args:
            class_labels (`int`, `str`, `list` or `torch.Tensor`, defaults to 0): the class of each image,
                as indices or (where the model has `class_names`) names such as `"seven"`. With colors, `None`
                leaves the class free.
            guidance_scale (`float`, defaults to 3.0): classifier-free guidance weight `w >= 0` of the class;
                1 is conditional sampling, 0 ignores the label, larger values steer harder.
            generator, num_inference_steps, output_type, return_dict, callback_on_step_end,
            callback_on_step_end_tensor_inputs, eta: as in [`UnconditionalDDPMPipeline`].
            batch_size (`int`, *optional*): number of images; a single label is repeated this many times, a
                list must have this length. Defaults to one image per label.
            color_labels (`int`, `str`, `list` or `torch.Tensor`, *optional*): for a model with
                `color_names`, the color of each image, as indices or names such as `"red"`; `None` (the
                default, or an entry) leaves the color free.
            color_guidance_scale (`float`, defaults to 2.0): the guidance weight of the color given the class,
                eps = eps(null) + w (eps(class) - eps(null)) + w_color (eps(class, color) - eps(class)); with the
                class free, eps(null) + w_color (eps(color) - eps(null)).

        Examples:
            ```py
            >>> pipe(class_labels=[7, 3], color_labels=["red", None]).images  # a red seven, a three of any color
            ```

        Returns:
            [`ImagePipelineOutput`] or `tuple`: the generated images, in the order of the labels.
        """
        check_guidance_scale(guidance_scale)
        check_guidance_scale(color_guidance_scale)
        if color_labels is not None and not self.num_colors:
            raise ValueError("This model is conditioned on the class alone; it takes no `color_labels`.")
        if batch_size is None and self.num_colors:
            counts = (_count(class_labels), _count(color_labels))
            batch_size = max(counts) if max(counts) > 1 else None
        labels = self.encode_class_labels(class_labels, batch_size)
        colors = self.encode_color_labels(color_labels, len(labels)) if self.num_colors else None
        generator = self.check_common_inputs(len(labels), generator, output_type, callback_on_step_end_tensor_inputs)
        return self.run_reverse_process(
            len(labels),
            lambda model_input, t: self.guided_prediction(
                model_input, t, labels, guidance_scale, colors, color_guidance_scale
            ),
            generator,
            num_inference_steps,
            output_type,
            return_dict,
            callback_on_step_end,
            callback_on_step_end_tensor_inputs,
            eta,
        )


def _is_integer(value) -> bool:
    """True for Python and NumPy integers, False for bools, floats and everything else."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(values) -> int:
    """How many labels `values` gives: a list's or tensor's length, 1 for one label or None."""
    if isinstance(values, torch.Tensor):
        return values.numel()
    return len(values) if isinstance(values, (list, tuple)) else 1


def _names(names: str | None) -> list[str]:
    return [name.strip() for name in names.split(",")] if names else []


def _label_index(label: int | str, names: list[str], count: int, kind: str) -> int:
    """A label of `kind` ("class" or "color") given as an int in 0..count-1, one of `names` (any case) or a
    decimal string -> its index."""
    if isinstance(label, str):
        key = label.strip().lower()
        if key in [name.lower() for name in names]:
            return [name.lower() for name in names].index(key)
        if not key.lstrip("-").isdigit():
            known = ", ".join(names) if names else "none (use integers)"
            raise ValueError(f"Unknown {kind} name {label!r}; this model's {kind} names: {known}.")
        label = int(key)
    if not _is_integer(label):
        raise ValueError(f"{kind.capitalize()} label {label!r} must be an integer index or a {kind} name.")
    if not 0 <= label < count:
        plural = "classes" if kind == "class" else f"{kind}s"
        raise ValueError(f"{kind.capitalize()} label {label!r} is outside this model's {plural} 0..{count - 1}.")
    return int(label)


def joint_label_index(
    classes: torch.Tensor | None, colors: torch.Tensor | None, num_classes: int, num_colors: int
) -> torch.Tensor | int:
    """The class-embedding row of (class, color): class * (num_colors + 1) + color, where None or a negative
    index stands for that label's null value (num_classes, num_colors). With `num_colors` 0 it is the class."""
    if classes is None and colors is None:
        return num_classes * (num_colors + 1) + num_colors
    reference = classes if classes is not None else colors
    classes = torch.full_like(reference, num_classes) if classes is None else classes.where(classes >= 0, num_classes)
    colors = torch.full_like(reference, num_colors) if colors is None else colors.where(colors >= 0, num_colors)
    return classes * (num_colors + 1) + colors


def check_guidance_scale(guidance_scale: float) -> None:
    """Classifier-free guidance needs a finite weight w >= 0."""
    if (
        not isinstance(guidance_scale, numbers.Real)
        or isinstance(guidance_scale, bool)
        or not math.isfinite(guidance_scale)
        or guidance_scale < 0
    ):
        raise ValueError(f"`guidance_scale` must be a finite number >= 0, got {guidance_scale!r}.")


def check_cluster_sizes(cluster_sizes: list[int], unet: UNet2DModel) -> None:
    """Self-guidance needs a non-negative size per cluster, some positive, and one UNet class embedding
    per cluster plus the null one."""
    if not cluster_sizes or any(not _is_integer(size) or size < 0 for size in cluster_sizes) or not any(cluster_sizes):
        raise ValueError(f"`cluster_sizes` must be non-negative integers, not all 0, got {cluster_sizes!r}.")
    num_class_embeds = getattr(unet.config, "num_class_embeds", None)
    if num_class_embeds != len(cluster_sizes) + 1:
        raise ValueError(
            f"{len(cluster_sizes)} clusters need a UNet with num_class_embeds = {len(cluster_sizes) + 1} "
            f"(the last is the null cluster), got {num_class_embeds}."
        )


def predicted_original_sample(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """x_0 implied by a prediction at x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps (DDPM eq. 4; for v,
    v = sqrt(abar) eps - sqrt(1 - abar) x_0, Salimans & Ho, 2022, Sec. 4)."""
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar) ** 0.5 * model_output) / alpha_bar**0.5
    if prediction_type == "v_prediction":
        return alpha_bar**0.5 * sample - (1 - alpha_bar) ** 0.5 * model_output
    return model_output


def prediction_from_original_sample(
    x_0: torch.Tensor, sample: torch.Tensor, alpha_bar: float, prediction_type: str
) -> torch.Tensor:
    """The inverse of `predicted_original_sample` at the same x_t: eps = (x_t - sqrt(abar) x_0) / sqrt(1 - abar),
    v = (sqrt(abar) x_t - x_0) / sqrt(1 - abar)."""
    if prediction_type == "epsilon":
        return (sample - alpha_bar**0.5 * x_0) / (1 - alpha_bar) ** 0.5
    if prediction_type == "v_prediction":
        return (alpha_bar**0.5 * sample - x_0) / (1 - alpha_bar) ** 0.5
    return x_0


def dynamic_threshold(x_0: torch.Tensor, ratio: float, max_value: float) -> torch.Tensor:
    """Dynamic thresholding (Saharia et al., 2022, Sec. 2.3): s = the `ratio` quantile of |x_0| per image,
    kept in [1, max_value]; x_0 is clipped to [-s, s] and divided by s (max_value 1 is plain clipping)."""
    flat = x_0.reshape(len(x_0), -1)
    s = torch.quantile(flat.abs(), ratio, dim=1).clamp(min=1, max=max_value).unsqueeze(1)
    return (flat.clamp(-s, s) / s).reshape(x_0.shape)


def classifier_free_guidance(
    unet: UNet2DModel, model_input: torch.Tensor, t: torch.Tensor, labels: torch.Tensor, null: int, scale: float
) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022, eq. 6 with w_paper = w - 1):
    eps = eps(x, null) + w * (eps(x, c) - eps(x, null)).

    Scale 1 is the purely conditional and 0 the purely unconditional prediction, each one UNet call;
    any other scale evaluates both in one batched call (conditional first, then null).
    """
    null_labels = torch.full_like(labels, null)
    if scale == 1:
        return unet(model_input, t, class_labels=labels).sample
    if scale == 0:
        return unet(model_input, t, class_labels=null_labels).sample
    both = unet(torch.cat([model_input, model_input]), t, class_labels=torch.cat([labels, null_labels])).sample
    conditional, unconditional = both.chunk(2)
    return extrapolate(unconditional, conditional, scale, model_input.shape[1])


def composable_guidance(
    unet: UNet2DModel,
    model_input: torch.Tensor,
    t: torch.Tensor,
    chain: list[torch.Tensor | int],
    weights: list[float],
) -> torch.Tensor:
    """Classifier-free guidance composed over conditions added one at a time (Ho & Salimans, 2022, eq. 6;
    Liu et al., 2022, for composing): with class-embedding rows r_0 (null) ... r_n, each adding a condition,
    eps = eps(r_0) + sum_i w_i (eps(r_i) - eps(r_{i-1})).

    By the chain rule p(x | a, b) = p(x) p(a | x) p(b | x, a), w_i weighs the i-th condition given the ones
    before it; all w_i = 1 is the conditional prediction eps(r_n), all 0 the unconditional eps(r_0). An image
    whose rows do not change at step i (a label left free) gets nothing from it. Steps that change no image's
    rows, and trailing steps of weight 0, are not evaluated; the rest go through the UNet in one batched call.
    """
    rows = [torch.full((len(model_input),), row, device=model_input.device) if isinstance(row, int) else row
            for row in chain]  # fmt: skip
    steps = [(rows[i], rows[i - 1], float(weights[i - 1])) for i in range(1, len(rows))]
    while steps and steps[-1][2] == 0:
        steps.pop()
    kept, scales = [rows[0]], []
    for current, previous, weight in steps:
        changed = current != previous
        if bool(changed.any()):
            kept.append(current)
            scales.append(weight * changed)
    outputs = unet(torch.cat([model_input] * len(kept)), t, class_labels=torch.cat(kept)).sample.chunk(len(kept))
    channels = model_input.shape[1]
    mean = outputs[0][:, :channels]
    for i, scale in enumerate(scales):
        scale = scale.to(mean.dtype).view(-1, *([1] * (mean.dim() - 1)))
        mean = mean + scale * (outputs[i + 1][:, :channels] - outputs[i][:, :channels])
    variance = outputs[-1][:, channels:]
    return torch.cat([mean, variance], dim=1) if variance.shape[1] else mean


def extrapolate(base: torch.Tensor, target: torch.Tensor, scale: float, channels: int) -> torch.Tensor:
    """base + w (target - base) on the first `channels` output channels, the mean prediction; a learned
    variance half (`variance_type="learned_range"`, 2C channels) is taken from `target` unchanged."""
    mean = base[:, :channels] + scale * (target[:, :channels] - base[:, :channels])
    return torch.cat([mean, target[:, channels:]], dim=1) if target.shape[1] > channels else mean

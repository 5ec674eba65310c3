"""Samplers and guidance checked against closed forms, with the Bayes-optimal denoiser for Gaussian data.

For data x_0 ~ N(mu, s^2 I) and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4), x_t and eps
are jointly Gaussian with Cov(eps, x_t) = sqrt(1 - abar_t) I and Var(x_t) = (abar_t s^2 + 1 - abar_t) I,
so the optimal (MSE) noise prediction, the network every DDPM is trained towards (eq. 14), is

    eps*(x_t, t) = E[eps | x_t] = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t)

and likewise E[x_0 | x_t] = mu + sqrt(abar_t) s^2 (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 - abar_t).
A sampler driven by it must return N(mu, s^2) up to its own discretization error. The noise schedule
below is recomputed in float64 from the DDPM paper's numbers, independently of diffusers.
"""

from dataclasses import dataclass

import pytest
import torch
from diffusers import ConfigMixin, DDPMScheduler, EulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.presets import PRESETS
from ddpm_zoo.schedulers import make_scheduler
from ddpm_zoo.visualize import forward_process

NUM_SAMPLES = 2000  # images per sampler run, of SIZE x SIZE pixels
SIZE = 4
# Channel 0 is "wide": its variance is checked against s^2, within the sampler's discretization error.
# Channel 1 is "narrow" (s^2 = beta_1, the first step's noise variance), with a large mean. Every
# consistent sampler keeps E[x] exact (the mean follows the trajectory of a point mass at mu, which DDPM,
# DDIM and the exponential integrators solve exactly), so its mean is checked to about 1e-4. Discretization
# can only shrink its variance (the last step returns E[x_0 | x_t], never wider than s^2), while stopping
# a step early leaves noise of variance at least beta_1 and so at least doubles it.
MEANS = (0.2, 0.8)
STDS = (0.8, 0.01)
Z = 4.5  # two-sided z-bound per check: false alarm below 1e-5 per check with exact tolerances


pytestmark = pytest.mark.usefixtures("one_thread")


def linear_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
    """abar_t = prod_{s<=t} (1 - beta_s) for DDPM's linear schedule (Ho et al. 2020, section 4), float64."""
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


@dataclass
class DenoiserOutput(BaseOutput):
    sample: torch.Tensor


class GaussianOptimalDenoiser(ModelMixin, ConfigMixin):
    """A UNet2DModel look-alike returning the exact E[eps | x_t] (or E[v | x_t], E[x_0 | x_t]).

    Unconditional when `means` holds one row; otherwise row k is class k's per-channel mean, and class
    index `len(means)` is the null class whose data is the uniform mixture of the classes.
    Fractional timesteps (Euler) get sigma_t = sqrt((1 - abar_t) / abar_t) linearly interpolated, as
    `EulerDiscreteScheduler` does.
    """

    @register_to_config
    def __init__(
        self,
        means: list[list[float]],
        stds: list[float],
        sample_size: int = SIZE,
        in_channels: int = 1,
        num_class_embeds: int | None = None,
        prediction_type: str = "epsilon",
    ):
        super().__init__()
        self.register_buffer("class_means", torch.tensor(means, dtype=torch.float64), persistent=False)
        self.register_buffer("channel_stds", torch.tensor(stds, dtype=torch.float64), persistent=False)
        abar = linear_alphas_cumprod()
        self.register_buffer("sigmas", ((1 - abar) / abar).sqrt(), persistent=False)
        self.batch_sizes: list[int] = []  # one entry per forward call

    def alpha_bar(self, timestep: torch.Tensor) -> torch.Tensor:
        """abar at (possibly fractional) timesteps, shaped (batch, 1, 1, 1)."""
        t = torch.as_tensor(timestep, dtype=torch.float64, device=self.sigmas.device).reshape(-1)
        low = t.floor().long().clamp(0, len(self.sigmas) - 1)
        high = (low + 1).clamp(max=len(self.sigmas) - 1)
        sigma = self.sigmas[low] + (t - low) * (self.sigmas[high] - self.sigmas[low])
        return (1 / (1 + sigma**2)).view(-1, 1, 1, 1)

    def class_prediction(self, x: torch.Tensor, abar: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """The optimal output for Gaussian data with per-channel `mean` ((C,) or one row per image)."""
        channels = x.shape[1]
        mean, var0 = mean.reshape(-1, channels, 1, 1), self.channel_stds.view(1, -1, 1, 1) ** 2
        residual = x - abar.sqrt() * mean
        var_t = abar * var0 + 1 - abar
        eps = (1 - abar).sqrt() * residual / var_t
        x0 = mean + abar.sqrt() * var0 * residual / var_t
        return {"epsilon": eps, "sample": x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[
            self.config.prediction_type
        ]

    def mixture_prediction(self, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """E[. | x_t] under the uniform mixture of the classes: posterior-weighted class predictions."""
        var_t = abar * self.channel_stds.view(1, -1, 1, 1) ** 2 + 1 - abar
        log_weights = torch.stack(
            [
                (-((x - abar.sqrt() * mean.view(1, -1, 1, 1)) ** 2) / (2 * var_t)).sum(dim=(1, 2, 3))
                for mean in self.class_means
            ],
            dim=1,
        )
        weights = log_weights.softmax(dim=1).view(len(x), -1, 1, 1, 1)
        predictions = torch.stack([self.class_prediction(x, abar, mean) for mean in self.class_means], dim=1)
        return (weights * predictions).sum(dim=1)

    def forward(self, sample, timestep, class_labels=None, return_dict: bool = True):
        self.batch_sizes.append(len(sample))
        x = sample.double()
        abar = self.alpha_bar(timestep).expand(len(x), -1, -1, -1)
        if class_labels is None:
            out = self.class_prediction(x, abar, self.class_means[0])
        else:
            labels = class_labels.to(x.device).long()
            real = labels < len(self.class_means)
            out = torch.empty_like(x)
            if real.any():
                out[real] = self.class_prediction(x[real], abar[real], self.class_means[labels[real]])
            if not real.all():
                out[~real] = self.mixture_prediction(x[~real], abar[~real])
        out = out.to(sample.dtype)
        return DenoiserOutput(sample=out) if return_dict else (out,)


def gaussian_denoiser(means, stds, prediction_type: str = "epsilon") -> GaussianOptimalDenoiser:
    """`means`: per-channel means (unconditional) or a list of them, one per class (conditional)."""
    rows = [list(means)] if not isinstance(means[0], (list, tuple)) else [list(row) for row in means]
    return GaussianOptimalDenoiser(
        means=rows,
        stds=list(stds),
        in_channels=len(stds),
        num_class_embeds=len(rows) + 1 if len(rows) > 1 else None,
        prediction_type=prediction_type,
    )


def scheduler_config(prediction_type: str = "epsilon", **overrides):
    """The presets' training schedule; no x_0 clipping, since Gaussian data is not confined to [-1, 1]."""
    config = dict(PRESETS["mnist-tiny"].scheduler, prediction_type=prediction_type, clip_sample=False)
    return DDPMScheduler(**{**config, **overrides}).config


def final_latents(pipeline, steps: int, seed: int = 0, **call_kwargs) -> torch.Tensor:
    """Run `pipeline` and return the last step's unclamped latents, in float64."""
    captured = {}

    def keep(pipe, i, t, kwargs):
        captured["latents"] = kwargs["latents"]
        return kwargs

    pipeline.set_progress_bar_config(disable=True)
    pipeline(
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
        callback_on_step_end=keep,
        **call_kwargs,
    )
    return captured["latents"].double()


def excess_kurtosis(x: torch.Tensor) -> float:
    z = (x - x.mean()) / x.std()
    return (z**4).mean().item() - 3


def assert_gaussian(x: torch.Tensor, mean: float, std: float, var_budget: float, check_var: bool = True):
    """Check samples (N, H, W) of one channel against N(mean, std^2).

    Per pixel and pooled over pixels (pixels are independent here): the mean within Z standard errors;
    pooled excess kurtosis within Z standard errors of 0 (every step is linear in Gaussian noise, so the
    output is exactly Gaussian; uniform noise is not); the variance, if `check_var`, within `var_budget`
    (the sampler's own discretization error, relative) plus Z standard errors.
    """
    n, pooled = x.shape[0], x.flatten()
    per_pixel_mean, per_pixel_var = x.mean(0), x.var(0)
    mean_se, pooled_mean_se = std / n**0.5, std / pooled.numel() ** 0.5
    assert (per_pixel_mean - mean).abs().max() < Z * mean_se, per_pixel_mean
    assert abs(pooled.mean() - mean) < Z * pooled_mean_se, pooled.mean()
    assert abs(excess_kurtosis(pooled)) < Z * (24 / pooled.numel()) ** 0.5, excess_kurtosis(pooled)
    if not check_var:
        return
    var_se, pooled_var_se = (2 / (n - 1)) ** 0.5, (2 / (pooled.numel() - 1)) ** 0.5
    relative = per_pixel_var / std**2 - 1
    assert relative.abs().max() < var_budget + Z * var_se, relative
    assert abs(pooled.var() / std**2 - 1) < var_budget + Z * pooled_var_se, pooled.var() / std**2


def check_sampler(pipeline, steps: int, var_budget: float, seed: int = 0, **call_kwargs):
    """Sample NUM_SAMPLES images; check both channels against N(MEANS[c], STDS[c]^2) (see MEANS)."""
    x = final_latents(pipeline, steps, seed=seed, batch_size=NUM_SAMPLES, **call_kwargs)
    assert_gaussian(x[:, 0], MEANS[0], STDS[0], var_budget)
    assert_gaussian(x[:, 1], MEANS[1], STDS[1], var_budget, check_var=False)
    narrow_var_ratio = x[:, 1].var(0) / STDS[1] ** 2
    assert narrow_var_ratio.max() < 1 + Z * (2 / (NUM_SAMPLES - 1)) ** 0.5, narrow_var_ratio


def gaussian_pipeline(scheduler: str, prediction_type: str = "epsilon", **config_overrides):
    model = gaussian_denoiser(MEANS, STDS, prediction_type)
    config = scheduler_config(prediction_type, **config_overrides)
    return UnconditionalDDPMPipeline(unet=model, scheduler=make_scheduler(scheduler, config))


# The variance budget is each sampler's discretization error for this data at that step count: with the
# exact denoiser, DDPM's fixed variance beta~_t (eq. 7) and the first-order DDIM / Euler steps shrink the
# variance slightly (DDIM 50 steps: about 7%), shrinking further as steps get fewer.
USUAL_STEPS = [
    ("ddpm", 1000, 0.03),
    ("ddpm", 250, 0.05),
    ("ddim", 50, 0.10),
    ("dpmsolver", 20, 0.03),
    ("euler", 50, 0.10),
    ("unipc", 20, 0.03),
]


def test_optimal_denoiser_is_the_conditional_expectation():
    """Orthogonality principle: eps - eps*(x_t) has zero mean and is uncorrelated with x_t (Monte Carlo)."""
    model = gaussian_denoiser(MEANS, STDS)
    abar_all = linear_alphas_cumprod()
    generator = torch.Generator().manual_seed(1)
    mean = torch.tensor(MEANS, dtype=torch.float64).view(1, 2, 1, 1)
    std = torch.tensor(STDS, dtype=torch.float64).view(1, 2, 1, 1)
    for t in (0, 100, 500, 999):
        x0 = mean + std * torch.randn(20000, 2, 1, 1, generator=generator, dtype=torch.float64)
        eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        abar = abar_all[t]
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        error = eps - model(xt.float(), torch.tensor(t)).sample.double()
        centered = xt - xt.mean(0)
        assert error.mean(0).abs().max() < 0.03
        assert (error * centered).mean(0).abs().max() < 0.03 * centered.std(0).max()
        # It beats the same formula with the wrong variance: the optimum is unique.
        wrong = gaussian_denoiser(MEANS, [2 * s for s in STDS])
        assert error.pow(2).mean() < (eps - wrong(xt.float(), torch.tensor(t)).sample.double()).pow(2).mean()


@pytest.mark.parametrize("scheduler,steps,var_budget", USUAL_STEPS, ids=[f"{n}-{s}" for n, s, _ in USUAL_STEPS])
def test_sampler_returns_the_data_distribution(scheduler, steps, var_budget):
    check_sampler(gaussian_pipeline(scheduler), steps, var_budget)


@pytest.mark.parametrize(
    "scheduler,steps,prediction_type",
    [("ddim", 50, "v_prediction"), ("dpmsolver", 20, "v_prediction"), ("ddpm", 250, "sample")],
)
def test_other_prediction_types(scheduler, steps, prediction_type):
    budget = dict((name, b) for name, _, b in USUAL_STEPS if name == scheduler)[scheduler]
    check_sampler(gaussian_pipeline(scheduler, prediction_type), steps, max(budget, 0.05))


def test_ddim_with_eta_one_returns_the_data_distribution():
    """eta = 1 (Song et al., 2021, eq. 16) makes each DDIM step DDPM's posterior step on the respaced chain, so
    it has DDPM's variance budget at the same step count (ancestral steps under-disperse when few: -16 % at 50)."""
    check_sampler(gaussian_pipeline("ddim"), 250, 0.05, eta=1.0)


def test_sigma_schedulers_start_at_their_first_timestep():
    """Euler with "leading" spacing starts below t=999: x_T must be scaled by the sigma of the first
    timestep actually used, i.e. after `set_timesteps` (regression: drawn before, the variance was 2.6x)."""

    def leading_euler() -> EulerDiscreteScheduler:
        return EulerDiscreteScheduler.from_config(scheduler_config(), timestep_spacing="leading")

    probe = leading_euler()
    sigma_before = probe.init_noise_sigma
    probe.set_timesteps(20)
    assert probe.timesteps[0] < 999 and probe.init_noise_sigma < 0.7 * sigma_before  # the order matters here
    pipeline = UnconditionalDDPMPipeline(unet=gaussian_denoiser(MEANS, STDS), scheduler=leading_euler())
    check_sampler(pipeline, 20, 0.20)


def test_forward_process_matches_q_xt_given_x0():
    """The forward strip's frames: x_t ~ N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4)."""
    scheduler = DDPMScheduler(**PRESETS["mnist-tiny"].scheduler)
    abar = linear_alphas_cumprod()
    x0 = torch.linspace(-1, 1, 16).view(1, 1, 4, 4).repeat(4000, 1, 1, 1)
    timesteps = [0, 10, 250, 999]
    frames = forward_process(x0, timesteps, scheduler, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (len(timesteps), *x0.shape)
    n = len(x0)
    for frame, t in zip(frames.double(), timesteps, strict=True):
        mean, var = abar[t].sqrt() * x0[0, 0].double(), 1 - abar[t]
        assert (frame[:, 0].mean(0) - mean).abs().max() < Z * (var / n).sqrt()
        assert (frame[:, 0].var(0) / var - 1).abs().max() < Z * (2 / (n - 1)) ** 0.5
        noise = (frame - abar[t].sqrt() * x0) / var.sqrt()
        assert abs(excess_kurtosis(noise)) < Z * (24 / noise.numel()) ** 0.5


# ---- classifier-free guidance, with three Gaussian classes and their mixture as the null class ----

CLASS_MEANS = ((-1.2,), (0.0,), (1.2,))
CLASS_STD = (0.8,)


def guided_pipeline(scheduler: str = "ddim") -> ClassConditionalDDPMPipeline:
    model = gaussian_denoiser(CLASS_MEANS, CLASS_STD)
    return ClassConditionalDDPMPipeline(
        unet=model, scheduler=make_scheduler(scheduler, scheduler_config()), class_names="low,mid,high"
    )


def test_guidance_reduces_to_conditional_and_unconditional_exactly():
    pipeline = guided_pipeline()
    model = pipeline.unet
    x = torch.randn(6, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(400)
    labels = torch.tensor([0, 1, 2, 2, 1, 0])
    conditional = model(x, t, class_labels=labels).sample
    unconditional = model(x, t, class_labels=torch.full_like(labels, 3)).sample
    assert not torch.allclose(conditional, unconditional)
    model.batch_sizes.clear()
    assert torch.equal(pipeline.guided_prediction(x, t, labels, 1.0), conditional)
    assert torch.equal(pipeline.guided_prediction(x, t, labels, 0.0), unconditional)
    guided = pipeline.guided_prediction(x, t, labels, 3.0)
    torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional), rtol=0, atol=1e-6)
    assert model.batch_sizes == [6, 6, 12]  # one call each; w=3 batches conditional and null together


@pytest.mark.parametrize("guidance_scale,batch_factor", [(0.0, 1), (1.0, 1), (3.0, 2), (None, 2)])
def test_guidance_uses_one_unet_call_per_step(guidance_scale, batch_factor):
    """None: the default scale, 3, guides (both predictions in one batched call)."""
    pipeline = guided_pipeline("dpmsolver")
    pipeline.set_progress_bar_config(disable=True)
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    pipeline(class_labels=[0, 2, "mid"], num_inference_steps=7, output_type="pt", **guidance)
    assert pipeline.unet.batch_sizes == [3 * batch_factor] * 7


def test_guided_sampling_statistics():
    """w=1 samples each class's Gaussian; w=0 the mixture (the null class): a third of the images from
    each class, each image spread as s^2 about its class mean; larger w pushes the outer classes outwards."""
    n = 1000
    pipeline = guided_pipeline("dpmsolver")
    for k, (mean,) in enumerate(CLASS_MEANS):
        x = final_latents(pipeline, 20, class_labels=[k] * n, guidance_scale=1.0)[:, 0]
        assert_gaussian(x, mean, CLASS_STD[0], var_budget=0.03)
    mixture = final_latents(pipeline, 20, class_labels=[1] * n, guidance_scale=0.0)[:, 0]
    image_means = mixture.mean(dim=(1, 2))
    nearest = (image_means[:, None] - torch.tensor(CLASS_MEANS).view(1, -1)).abs().argmin(dim=1)
    fractions = torch.bincount(nearest, minlength=len(CLASS_MEANS)) / n
    assert (fractions - 1 / 3).abs().max() < Z * (2 / 9 / n) ** 0.5, fractions
    within = mixture.flatten(1).var(dim=1).mean() / CLASS_STD[0] ** 2
    assert abs(within - 1) < 0.03 + Z * (2 / (n * (SIZE * SIZE - 1))) ** 0.5, within
    outer = [
        final_latents(pipeline, 20, class_labels=[2] * 200, guidance_scale=w)[:, 0].mean().item()
        for w in (1.0, 3.0, 5.0)
    ]
    assert outer[0] + 0.15 < outer[1] < outer[2], outer

"""Training targets and losses, and the variational bound they come from.

The "simple" objective of Ho et al. (2020, eq. 14) regresses eps, v (Salimans & Ho, 2022) or x_0, optionally
weighted by Min-SNR-gamma (Hang et al., 2023). With a learned variance (diffusers' `variance_type=
"learned_range"`: the network outputs 2C channels) the loss is Improved DDPM's hybrid L_simple + lambda L_vlb
(Nichol & Dhariwal, 2021, Sec. 3.1). The terms of the bound L_vlb = L_T + sum_t L_{t-1} + L_0 (Ho et al.,
eq. 5) are written here once and serve both the hybrid loss and the bits/dim evaluation.

Timesteps are 0-based as in diffusers: index t in [0, T) is step t + 1 of the papers, and `alphas_cumprod[t]`
is their abar_{t+1}.
"""

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

VARIANCE_TYPES = ("fixed_small", "fixed_large", "learned_range")
HYBRID_VLB_WEIGHT = 1e-3  # lambda of L_hybrid (Nichol & Dhariwal, 2021, Sec. 3.1)
BINS = 255  # 8-bit images: x_0 in [-1, 1] on 256 levels, bin half-width 1 / 255 (Ho et al., eq. 13)


def noise_scheduler(
    preset_schedule: dict,
    num_train_timesteps: int,
    beta_schedule: str,
    prediction_type: str,
    variance_type: str,
) -> DDPMScheduler:
    """The forward process a model is trained and saved with: a preset's `DDPMScheduler` config with the run's
    step count, betas, prediction type and variance type."""
    run = {
        "num_train_timesteps": num_train_timesteps,
        "beta_schedule": beta_schedule,
        "prediction_type": prediction_type,
        "variance_type": variance_type,
    }
    return DDPMScheduler(**{**preset_schedule, **run})


def with_variance_channels(unet_config: dict, variance_type: str) -> dict:
    """A learned variance doubles the output channels: the mean and the variance interpolation (Improved DDPM
    eq. 15)."""
    if variance_type == "learned_range":
        return {**unet_config, "out_channels": 2 * unet_config.get("in_channels", 3)}
    return unet_config


def training_target(
    scheduler: DDPMScheduler, prediction_type: str, clean: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """eps (eq. 14), v = sqrt(abar) eps - sqrt(1 - abar) x_0, or x_0 itself."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(clean, noise, t)
    return clean


def min_snr_weights(scheduler: DDPMScheduler, prediction_type: str, gamma: float) -> torch.Tensor:
    """Per-timestep loss weights of Min-SNR-gamma (Hang et al., 2023, eq. 9), SNR(t) = abar / (1 - abar),
    expressed for the regressed target: min(SNR, gamma) / SNR for eps, / (SNR + 1) for v, as is for x_0."""
    snr = compute_snr(scheduler, torch.arange(scheduler.config.num_train_timesteps))
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped


TIMESTEP_SAMPLINGS = ("uniform", "importance")
IMPORTANCE_UNIFORM_SHARE = 0.25


def importance_proposal(weights: torch.Tensor, uniform_share: float) -> torch.Tensor:
    """A proposal p(t) for drawing training timesteps: `uniform_share` of uniform mass plus the rest in proportion
    to the loss weights w(t). Drawing t ~ p and weighting a sample's loss by w(t) / (T p(t)) keeps the expected
    loss of uniform t (importance sampling, as for L_vlb in Nichol & Dhariwal, 2021, Sec. 3.3) while spending
    fewer samples where w(t) is near zero."""
    count = weights.numel()
    return uniform_share / count + (1 - uniform_share) * weights / weights.sum()


def diffusion_loss(
    prediction: torch.Tensor, target: torch.Tensor, t: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error in fp32 (eq. 14); with `weights`, each sample's error (an image's, or a point's) is
    scaled by weights[t]."""
    if weights is None:
        return F.mse_loss(prediction.float(), target.float())
    per_image = mean_over_pixels(F.mse_loss(prediction.float(), target.float(), reduction="none"))
    return (per_image * weights[t]).mean()


def gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped to broadcast over a batch like `like`, in fp32 on its device."""
    picked = values.to(device=like.device, dtype=torch.float32)[t.to(like.device)]
    return picked.view(-1, *([1] * (like.dim() - 1)))


class DiffusionTerms:
    """The quantities of the forward process q that the bound needs, in fp32 (Ho et al., eqs. 4, 6, 7)."""

    def __init__(self, scheduler: DDPMScheduler, device: torch.device | str = "cpu"):
        self.num_timesteps = scheduler.config.num_train_timesteps
        alphas_cumprod = scheduler.alphas_cumprod.double().cpu()
        previous = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        betas = 1 - alphas_cumprod / previous
        self.alphas_cumprod = alphas_cumprod.float()
        self.betas = betas.float()
        # beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t (eq. 7) and the mean's two coefficients.
        self.posterior_variance = ((1 - previous) / (1 - alphas_cumprod) * betas).float()
        self.posterior_mean_x0 = (previous.sqrt() * betas / (1 - alphas_cumprod)).float()
        self.posterior_mean_xt = ((1 - betas).sqrt() * (1 - previous) / (1 - alphas_cumprod)).float()
        # learned_range interpolates between log beta~_t and log beta_t. At t = 0, where beta~ is 0, the
        # decoder takes beta~ of step 1 (as improved-diffusion does); sampling never draws noise there.
        self.log_variance_min = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]]).log()
        self.log_variance_max = self.betas.log()
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.to(device))

    def posterior(self, x_0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log variance of q(x_{t-1} | x_t, x_0) (eqs. 6-7); at t = 0 the variance of step 1 stands
        in for the zero one (that term is the decoder's, which does not use it)."""
        mean = gather(self.posterior_mean_x0, t, x_t) * x_0 + gather(self.posterior_mean_xt, t, x_t) * x_t
        return mean, gather(self.log_variance_min, t, x_t)

    def log_variance(
        self, variance_type: str, t: torch.Tensor, like: torch.Tensor, v: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log Sigma_theta(x_t, t): learned, u log beta_t + (1 - u) log beta~_t with u = (v + 1) / 2 (Improved
        DDPM eq. 15, as diffusers' DDPMScheduler reads it); fixed, log beta~_t or log beta_t (Ho et al., Sec.
        3.2); each with beta~ of step 1 in place of step 0's zero, as improved-diffusion evaluates them."""
        if variance_type == "learned_range":
            u = (v.float() + 1) / 2
            return u * gather(self.log_variance_max, t, like) + (1 - u) * gather(self.log_variance_min, t, like)
        fixed = (
            self.log_variance_min
            if variance_type == "fixed_small"
            else torch.cat([self.log_variance_min[:1], self.log_variance_max[1:]])
        )
        return gather(fixed, t, like).expand_as(like)

    def original_sample(
        self, prediction: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """x_0 from the network's prediction at x_t (eq. 4 solved for x_0, or v's definition)."""
        alpha_bar = gather(self.alphas_cumprod, t, x_t)
        prediction = prediction.float()
        if prediction_type == "epsilon":
            return (x_t - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
        if prediction_type == "v_prediction":
            return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * prediction
        return prediction

    def prior_kl(self, x_0: torch.Tensor) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) || N(0, I)) per image, in bits per dimension."""
        t = torch.full((x_0.shape[0],), self.num_timesteps - 1, device=x_0.device)
        alpha_bar = gather(self.alphas_cumprod, t, x_0)
        kl = normal_kl(alpha_bar.sqrt() * x_0, (1 - alpha_bar).log(), torch.zeros_like(x_0), torch.zeros_like(x_0))
        return mean_over_pixels(kl) / math.log(2)

    def vlb_term(
        self,
        x_0: torch.Tensor,
        x_t: torch.Tensor,
        t: torch.Tensor,
        model_mean: torch.Tensor,
        model_log_variance: torch.Tensor,
    ) -> torch.Tensor:
        """Per image, in bits per dimension: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t))
        for t > 0 (eq. 5), and at t = 0 the discretized Gaussian decoder's -log p_theta(x_0 | x_1) (eq. 13)."""
        true_mean, true_log_variance = self.posterior(x_0, x_t, t)
        kl = mean_over_pixels(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance))
        decoder = -mean_over_pixels(discretized_gaussian_log_likelihood(x_0, model_mean, 0.5 * model_log_variance))
        return torch.where(t == 0, decoder, kl) / math.log(2)

    def model_mean(
        self, prediction: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """mu_theta(x_t, t): the posterior mean (eq. 7) at the predicted x_0."""
        return self.posterior(self.original_sample(prediction, prediction_type, x_t, t), x_t, t)[0]


def mean_over_pixels(values: torch.Tensor) -> torch.Tensor:
    """The mean over every dimension but the batch: an image's pixels and channels, a point's coordinates."""
    return values.flatten(1).mean(dim=1)


def normal_kl(
    mean1: torch.Tensor, log_variance1: torch.Tensor, mean2: torch.Tensor, log_variance2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, exp(log_variance1)) || N(mean2, exp(log_variance2))) elementwise, in nats."""
    return 0.5 * (
        log_variance2
        - log_variance1
        + torch.exp(log_variance1 - log_variance2)
        + (mean1 - mean2) ** 2 * torch.exp(-log_variance2)
        - 1.0
    )


def discretized_gaussian_log_likelihood(
    x_0: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log of the mass N(means, exp(log_scales)^2) gives the 8-bit bin of each x_0 in [-1, 1], the edge bins
    reaching to -inf / +inf (Ho et al., eq. 13), in nats, elementwise."""
    centred = x_0 - means
    inverse_scale = torch.exp(-log_scales)
    upper = inverse_scale * (centred + 1.0 / BINS)
    lower = inverse_scale * (centred - 1.0 / BINS)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_one_minus_cdf_lower = torch.special.log_ndtr(-lower)
    middle = torch.special.ndtr(upper) - torch.special.ndtr(lower)
    return torch.where(
        x_0 < -0.999,
        log_cdf_upper,
        torch.where(x_0 > 0.999, log_one_minus_cdf_lower, middle.clamp(min=1e-12).log()),
    )


def hybrid_loss(
    terms: DiffusionTerms,
    prediction: torch.Tensor,
    target: torch.Tensor,
    prediction_type: str,
    x_0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    weights: torch.Tensor | None,
    vlb_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_hybrid = L_simple + lambda L_vlb (Improved DDPM Sec. 3.1) for a 2C-channel prediction: the mean half
    regresses `target` (Min-SNR weights apply to it only), and L_vlb = T E_t[L_t] trains the variance half with
    the mean held fixed (a stop-gradient), so lambda T L_t with lambda = 0.001 weighs each sampled term.
    `vlb_weights[t]` scales each sampled L_t: 1 / (T p(t)) when t is drawn from p rather than uniformly."""
    channels = x_0.shape[1]
    mean_prediction, v = prediction[:, :channels], prediction[:, channels:]
    simple = diffusion_loss(mean_prediction, target, t, weights)
    model_mean = terms.model_mean(mean_prediction.detach(), prediction_type, x_t, t)
    log_variance = terms.log_variance("learned_range", t, x_t, v)
    vlb = terms.vlb_term(x_0.float(), x_t.float(), t, model_mean, log_variance)
    if vlb_weights is not None:
        vlb = vlb * vlb_weights[t]
    return simple + HYBRID_VLB_WEIGHT * terms.num_timesteps * vlb.mean()

"""Negative log-likelihood in bits per dimension: the variational bound of Ho et al. (2020, eq. 5),

    -log p(x_0) <= L_T + sum_{t=2..T} L_{t-1} + L_0,

estimated per image as improved-diffusion's `calc_bpd_loop` does, for fixed and learned variance alike. The
sum over t is exact when every timestep is evaluated, and otherwise stratified: the T - 1 timesteps are cut
into K contiguous strata, one uniform draw per stratum and image, weighted by the stratum's size (unbiased).
Images are 8-bit, so L_0 is the discretized Gaussian decoder (eq. 13) and the bound is a bound on the
probability of the image's pixel values.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiffusionPipeline
from huggingface_hub import EvalResult, ModelCard

from ddpm_zoo import __version__
from ddpm_zoo.cards import refresh_model_card
from ddpm_zoo.data import load_mnist_5k_arrays, to_model_space
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation.classifier import classifier_split
from ddpm_zoo.evaluation.references import Reference, dataset_reference, digit_reference, is_digit_model
from ddpm_zoo.evaluation.report import TASK_TYPE
from ddpm_zoo.objectives import DiffusionTerms

Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

LIKELIHOOD_FILE = "likelihood.json"
LIKELIHOOD_IMAGES = 500
LIKELIHOOD_TIMESTEPS = 100
BITS_PER_DIM = "bits_per_dim"


@dataclass
class BoundEstimate:
    """The bound averaged over images, in bits per dimension, with its terms and its standard error."""

    bits_per_dim: float
    standard_error: float
    prior: float
    diffusion: float
    decoder: float
    num_images: int
    num_timesteps: int

    def as_dict(self) -> dict:
        return {
            "bits_per_dim": self.bits_per_dim,
            "standard_error": self.standard_error,
            "terms": {"prior_L_T": self.prior, "sum_L_t": self.diffusion, "decoder_L_0": self.decoder},
            "num_images": self.num_images,
            "timesteps_evaluated": self.num_timesteps,
        }


def stratified_timesteps(
    num_train_timesteps: int, count: int, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, batch) timesteps in 1..T-1, one uniform draw per stratum and image, and each stratum's size
    (the weight that makes the sum over strata an unbiased estimate of the sum over all timesteps)."""
    edges = torch.linspace(1, num_train_timesteps, count + 1).round().long()
    sizes = edges[1:] - edges[:-1]
    if count == num_train_timesteps - 1:
        return torch.arange(1, num_train_timesteps).unsqueeze(1).expand(-1, batch), sizes
    offsets = (torch.rand(count, batch, generator=generator) * sizes.unsqueeze(1)).long()
    return edges[:-1].unsqueeze(1) + offsets, sizes


def model_terms(
    terms: DiffusionTerms, output: torch.Tensor, channels: int, config: dict, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """mu_theta and log Sigma_theta from a model output (C channels, or 2C with a learned variance), with x_0
    clipped as the saved scheduler config samples it (`clip_sample`)."""
    prediction = output[:, :channels]
    x_0 = terms.original_sample(prediction, config["prediction_type"], x_t, t)
    if config.get("clip_sample", False):
        limit = config.get("clip_sample_range", 1.0)
        x_0 = x_0.clamp(-limit, limit)
    mean = terms.posterior(x_0, x_t, t)[0]
    variance_type = config.get("variance_type") or "fixed_small"
    v = output[:, channels:] if variance_type == "learned_range" else None
    return mean, terms.log_variance(variance_type, t, x_t, v)


@torch.no_grad()
def bound_per_image(
    predict: Predict,
    scheduler: DDPMScheduler,
    terms: DiffusionTerms,
    x_0: torch.Tensor,
    num_timesteps: int,
    generator: torch.Generator,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_T, sum of L_{t-1} over t = 2..T, L_0) for each image of `x_0` (float in [-1, 1], on the model's
    device), in bits per dimension; each model call takes up to `batch_size` (image, timestep) pairs."""
    config, count, device = dict(scheduler.config), x_0.shape[0], x_0.device

    def term(t: torch.Tensor) -> torch.Tensor:
        """L at each timestep of `t` (k * count of them, k timesteps for every image), shaped (k, count)."""
        x_0s = x_0.repeat(len(t) // count, 1, 1, 1)
        noise = torch.randn(x_0s.shape, generator=generator).to(device)
        x_t = scheduler.add_noise(x_0s, noise, t)
        mean, log_variance = model_terms(terms, predict(x_t, t).float(), x_0.shape[1], config, x_t, t)
        return terms.vlb_term(x_0s, x_t, t, mean, log_variance).view(-1, count)

    steps, sizes = stratified_timesteps(terms.num_timesteps, num_timesteps, count, generator)
    per_call = max(1, batch_size // count)
    diffusion = torch.zeros(count, device=device)
    for chunk, weights in zip(steps.split(per_call), sizes.split(per_call), strict=True):
        diffusion += (weights.to(device).unsqueeze(1) * term(chunk.flatten().to(device))).sum(dim=0)
    decoder = term(torch.zeros(count, dtype=torch.long, device=device))[0]
    return terms.prior_kl(x_0), diffusion, decoder


def variational_bound(
    predict: Predict,
    scheduler: DDPMScheduler,
    images: torch.Tensor,
    num_timesteps: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> BoundEstimate:
    """The bound in bits/dim over uint8 images (N, C, H, W), evaluating `num_timesteps` of the T - 1 KL terms
    per image (None: all of them) with up to `batch_size` (image, timestep) pairs per call of `predict(x_t, t)`,
    the model's raw output. Seeded: the same call gives the same number."""
    total_steps = scheduler.config.num_train_timesteps
    count = total_steps - 1 if num_timesteps is None else min(num_timesteps, total_steps - 1)
    generator = torch.Generator().manual_seed(seed)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    terms = DiffusionTerms(scheduler, device)
    parts = [
        bound_per_image(predict, scheduler, terms, to_model_space(batch.to(device)), count, generator, batch_size)
        for batch in images.split(batch_size)
    ]
    prior, diffusion, decoder = (torch.cat(column).cpu().double() for column in zip(*parts, strict=True))
    total = prior + diffusion + decoder
    return BoundEstimate(
        bits_per_dim=float(total.mean()),
        standard_error=float(total.std() / len(total) ** 0.5) if len(total) > 1 else float("nan"),
        prior=float(prior.mean()),
        diffusion=float(diffusion.mean()),
        decoder=float(decoder.mean()),
        num_images=len(total),
        num_timesteps=count + 1,
    )


def null_class_labels(pipeline: DiffusionPipeline, batch: int) -> torch.Tensor | None:
    """The null class (the last embedding) for a UNet with class embeddings, so the bound is that of the
    unconditional model p(x_0) that classifier-free training learns beside the conditional ones."""
    embeds = pipeline.unet.config.get("num_class_embeds")
    if embeds is None:
        return None
    return torch.full((batch,), embeds - 1, dtype=torch.long, device=pipeline.unet.device)


def pipeline_bound(
    pipeline: DiffusionPipeline,
    images: torch.Tensor,
    num_timesteps: int | None = None,
    batch_size: int = 100,
    seed: int = 0,
) -> BoundEstimate:
    """`variational_bound` of a loaded pipeline's UNet under its own training schedule (the scheduler config it
    was saved with, whatever scheduler is swapped in for sampling)."""
    unet = pipeline.unet
    scheduler = DDPMScheduler.from_config(pipeline.scheduler.config)

    def predict(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = null_class_labels(pipeline, x_t.shape[0])
        return unet(x_t.to(unet.dtype), t, class_labels=labels).sample

    return variational_bound(predict, scheduler, images, num_timesteps, batch_size, seed, unet.device)


def model_size(pipeline: DiffusionPipeline) -> int:
    size = pipeline.unet.config.sample_size
    return int(size if isinstance(size, int) else size[0])


def likelihood_reference(pipeline: DiffusionPipeline, reference: str | None, digits: bool | None = None) -> Reference:
    """The real images the bound is taken on: `reference` (a Hub dataset id or a folder), else for a digit
    model (`digits`; None: decided from the pipeline) the embedded digits' classifier test split (the last 50
    of each digit; colorized for RGB models, resized to the model's size)."""
    channels, size = int(pipeline.unet.config.in_channels), model_size(pipeline)
    if reference is not None:
        return dataset_reference(reference, size, channels)
    if not (is_digit_model(pipeline) if digits is None else digits):
        raise UserInputError("name the real images to take the bound on for this (non-digit) model: --reference")
    digits = digit_reference(channels)
    _, test = classifier_split(torch.from_numpy(load_mnist_5k_arrays()[1]))
    images = digits.images[test]
    if images.shape[-1] != size:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
        images = images.round().clamp(0, 255).to(torch.uint8)
    name = f"{digits.name} classifier test split"
    return Reference(name, digits.dataset_type, f"{digits.dataset_name}, test split", images, digits.key)


def describe_bound(estimate: BoundEstimate) -> str:
    """'bits/dim 1.234 +- 0.005 (L_T 0.000, sum L_t 1.000, L_0 0.234; 500 images, 101 timesteps)'."""
    return (
        f"bits/dim {estimate.bits_per_dim:.4f} +- {estimate.standard_error:.4f} (L_T {estimate.prior:.4f}, "
        f"sum L_t {estimate.diffusion:.4f}, L_0 {estimate.decoder:.4f}; {estimate.num_images} images, "
        f"{estimate.num_timesteps} timesteps)"
    )


def likelihood_document(
    model: str, estimate: BoundEstimate, reference: Reference, pipeline: DiffusionPipeline, seed: int
) -> dict[str, Any]:
    """The JSON written next to the model: the bound, its terms, the images and the schedule it was taken on."""
    return {
        "model": model,
        "ddpm_zoo_version": __version__,
        "metric": "variational bound on -log p(x_0), bits per dimension (Ho et al., 2020, eq. 5)",
        "reference": {
            "name": reference.name,
            "dataset_type": reference.dataset_type,
            "dataset_name": reference.dataset_name,
        },
        "variance_type": pipeline.scheduler.config.get("variance_type", "fixed_small"),
        "num_train_timesteps": int(pipeline.scheduler.config.num_train_timesteps),
        "seed": seed,
        **estimate.as_dict(),
    }


def bound_card_result(document: dict[str, Any]) -> EvalResult:
    """The bound as a model-index entry."""
    reference = document["reference"]
    return EvalResult(
        task_type=TASK_TYPE,
        dataset_type=reference["dataset_type"],
        dataset_name=reference["dataset_name"],
        metric_type=BITS_PER_DIM,
        metric_name="NLL bound (bits/dim)",
        metric_value=round(document["bits_per_dim"], 4),
        metric_config=f"{document['num_images']} images, {document['timesteps_evaluated']} timesteps, "
        f"seed {document['seed']}",
    )


def add_bound_to_card(folder: Path, document: dict[str, Any]) -> Path | None:
    """Re-render a trained folder's card with the bound beside the sampling results it already reports."""
    readme = folder / "README.md"
    kept = (ModelCard(readme.read_text(encoding="utf-8")).data.eval_results or []) if readme.is_file() else []
    kept = [result for result in kept if result.metric_type != BITS_PER_DIM]
    return refresh_model_card(folder, [*kept, bound_card_result(document)])

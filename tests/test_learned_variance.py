"""Learned variance and the variational bound, checked against Gaussian data N(mu, s^2 I), for which the true
reverse process is Gaussian and known in closed form: its mean is the posterior mean at E[x_0 | x_t] and its
variance beta~_t + c_t^2 Var[x_0 | x_t] (c_t the x_0 coefficient of eq. 7)."""

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import BLOCK_DDPM_ZOO, launch, tiny_training_args, write_tiny_unet_config
from diffusers import DDPMScheduler
from huggingface_hub import ModelCard

from ddpm_zoo.evaluation.likelihood import stratified_timesteps, variational_bound
from ddpm_zoo.objectives import DiffusionTerms, gather, hybrid_loss, training_target

DDPM_ZOO = [sys.executable, "-m", "ddpm_zoo.commands.main"]
SAMPLE_WITH_EVERY_SCHEDULER = (
    BLOCK_DDPM_ZOO
    + """
import json, torch
from diffusers import DDIMScheduler, DDPMScheduler, DiffusionPipeline, DPMSolverMultistepScheduler
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
shapes = {}
for cls in (DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler):
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(0)
    images = pipe(batch_size=2, generator=generator, num_inference_steps=4, output_type="np").images
    assert images.min() >= 0 and images.max() <= 1
    shapes[cls.__name__] = list(images.shape)
print(json.dumps(shapes))
"""
)
MEAN, STD = 0.1, 0.3  # the data's per-pixel Gaussian, well inside [-1, 1]
SHAPE = (1, 4, 4)


def analytic_output(terms: DiffusionTerms, x_t: torch.Tensor, t: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The exact 2C-channel output: the mean half predicts E[eps | x_t] (or v, or x_0), the variance half the
    v that makes diffusers' learned_range variance the true reverse variance."""
    alpha_bar = gather(terms.alphas_cumprod, t, x_t)
    gain = alpha_bar.sqrt() * STD**2 / (alpha_bar * STD**2 + 1 - alpha_bar)
    x_0 = MEAN + gain * (x_t - alpha_bar.sqrt() * MEAN)
    eps = (x_t - alpha_bar.sqrt() * x_0) / (1 - alpha_bar).sqrt()
    mean_half = {"epsilon": eps, "v_prediction": alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x_0}
    variance = gather(terms.posterior_variance, t, x_t) + gather(terms.posterior_mean_x0, t, x_t) ** 2 * STD**2 * (
        1 - alpha_bar
    ) / (alpha_bar * STD**2 + 1 - alpha_bar)
    low, high = gather(terms.log_variance_min, t, x_t), gather(terms.log_variance_max, t, x_t)
    v = 2 * (variance.log() - low) / (high - low) - 1
    return torch.cat([mean_half.get(prediction_type, x_0), v.expand_as(x_t)], dim=1)


def discretized_gaussian_images(
    count: int, seed: int, shape: tuple[int, ...] = SHAPE
) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit images of the Gaussian and the exact -log2 P of each image's pixel values, per dimension."""
    generator = torch.Generator().manual_seed(seed)
    x = MEAN + STD * torch.randn(count, *shape, generator=generator, dtype=torch.float64)
    levels = ((x + 1) * 127.5).round().clamp(0, 255)
    centre = levels / 127.5 - 1

    def cdf(edge: torch.Tensor) -> torch.Tensor:
        return torch.special.ndtr((edge - MEAN) / STD)

    upper = torch.where(levels == 255, torch.ones_like(centre), cdf(centre + 1 / 255))
    lower = torch.where(levels == 0, torch.zeros_like(centre), cdf(centre - 1 / 255))
    return levels.to(torch.uint8), -(upper - lower).log2().flatten(1).mean(dim=1)


def schedule(variance_type: str = "learned_range", prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, variance_type=variance_type, prediction_type=prediction_type, clip_sample=False
    )


def test_learned_range_can_represent_the_true_reverse_variance():
    terms = DiffusionTerms(schedule())
    t = torch.arange(1000)
    x_t = torch.zeros(1000, *SHAPE)
    v = analytic_output(terms, x_t, t, "epsilon")[:, 1:]
    assert v.min() >= -1 and v.max() <= 1
    assert torch.allclose(
        terms.log_variance("learned_range", t, x_t, v).exp()[:, 0, 0, 0],
        v.new_tensor(0)
        + (
            terms.posterior_variance
            + terms.posterior_mean_x0**2
            * STD**2
            * (1 - terms.alphas_cumprod)
            / (terms.alphas_cumprod * STD**2 + 1 - terms.alphas_cumprod)
        ),
        rtol=1e-4,
    )


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_hybrid_loss_is_smallest_at_the_analytic_mean_and_variance(prediction_type):
    scheduler = schedule(prediction_type=prediction_type)
    terms = DiffusionTerms(scheduler)
    generator = torch.Generator().manual_seed(0)
    count = 20000
    x_0 = MEAN + STD * torch.randn(count, *SHAPE, generator=generator)
    noise = torch.randn(count, *SHAPE, generator=generator)
    t = torch.randint(1, 1000, (count,), generator=generator)
    x_t = scheduler.add_noise(x_0, noise, t)
    target = training_target(scheduler, prediction_type, x_0, noise, t)
    exact = analytic_output(terms, x_t, t, prediction_type)

    def loss(output: torch.Tensor) -> float:
        return float(hybrid_loss(terms, output, target, prediction_type, x_0, x_t, t, None))

    best = loss(exact)
    assert math.isfinite(best)
    for shift in (-0.3, 0.3):
        assert loss(exact + torch.cat([torch.zeros_like(x_t), torch.full_like(x_t, shift)], 1)) > best
        assert loss(exact + torch.cat([torch.full_like(x_t, shift / 10), torch.zeros_like(x_t)], 1)) > best


def test_the_hybrid_loss_trains_the_variance_half_only_through_the_bound():
    scheduler = schedule()
    terms = DiffusionTerms(scheduler)
    x_0 = torch.randn(8, *SHAPE).clamp(-1, 1)
    noise = torch.randn_like(x_0)
    t = torch.randint(0, 1000, (8,))
    x_t = scheduler.add_noise(x_0, noise, t)
    output = torch.randn(8, 2, 4, 4, requires_grad=True)
    hybrid_loss(terms, output, noise, "epsilon", x_0, x_t, t, None).backward()
    mean_gradient = output.grad[:, :1].clone()
    output.grad = None
    torch.nn.functional.mse_loss(output[:, :1], noise).backward()
    assert torch.allclose(mean_gradient, output.grad[:, :1])  # the stop-gradient: L_vlb does not move the mean
    assert torch.isfinite(mean_gradient).all()


def test_bits_per_dim_of_the_analytic_model_is_the_exact_nll_at_t_1000():
    scheduler = schedule()
    terms = DiffusionTerms(scheduler)
    images, nll = discretized_gaussian_images(200, seed=1, shape=(1, 16, 16))
    estimate = variational_bound(
        lambda x_t, t: analytic_output(terms, x_t, t, "epsilon"), scheduler, images, None, 200 * 100
    )
    assert estimate.num_timesteps == 1000
    assert estimate.bits_per_dim == pytest.approx(estimate.prior + estimate.diffusion + estimate.decoder, abs=1e-9)
    # The bound of a model whose reverse process is the true one is the data's NLL, up to the 8-bit
    # discretization of x_0 inside q(x_1 | x_0) (measured 0.002 bits/dim) and the noise of one draw per term
    # (standard error of the difference 0.006): tolerance 0.03 bits/dim of about 7.3.
    assert estimate.bits_per_dim == pytest.approx(float(nll.mean()), abs=0.03)
    assert estimate.prior < 1e-4


def test_a_fixed_variance_bound_is_looser_and_the_stratified_estimate_agrees():
    images, _ = discretized_gaussian_images(120, seed=2)
    learned, fixed = schedule(), schedule("fixed_small")
    terms = DiffusionTerms(learned)

    def mean_only(x_t, t):
        return analytic_output(terms, x_t, t, "epsilon")[:, :1]

    exact = variational_bound(lambda x_t, t: analytic_output(terms, x_t, t, "epsilon"), learned, images, 100)
    looser = variational_bound(mean_only, fixed, images, 100)
    assert looser.bits_per_dim > exact.bits_per_dim + 0.3
    again = variational_bound(mean_only, fixed, images, 100)
    assert again == looser  # seeded


def test_stratified_timesteps_cover_every_step_once_when_all_are_asked():
    steps, sizes = stratified_timesteps(1000, 999, 3, torch.Generator().manual_seed(0))
    assert steps[:, 0].tolist() == list(range(1, 1000)) and sizes.sum() == 999
    steps, sizes = stratified_timesteps(1000, 10, 1000, torch.Generator().manual_seed(0))
    assert sizes.sum() == 999 and steps.min() >= 1 and steps.max() <= 999
    assert all((steps[k] >= 1 + k * 99.9 - 1).all() for k in range(10))


@pytest.mark.slow
def test_a_learned_variance_model_trains_samples_with_any_scheduler_and_reports_bits_per_dim(tmp_path):
    config = write_tiny_unet_config(tmp_path)
    output = tmp_path / "run"
    result = launch("train_unconditional.py", tiny_training_args(output, config, variance_type="learned_range"))
    assert result.returncode == 0, result.stderr[-3000:]
    unet = json.loads((output / "unet" / "config.json").read_text())
    scheduler = json.loads((output / "scheduler" / "scheduler_config.json").read_text())
    assert (unet["in_channels"], unet["out_channels"], scheduler["variance_type"]) == (1, 2, "learned_range")
    sampled = subprocess.run(
        [sys.executable, "-c", SAMPLE_WITH_EVERY_SCHEDULER, str(output)], capture_output=True, text=True, cwd="/"
    )
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert json.loads(sampled.stdout.strip().splitlines()[-1]) == {
        name: [2, 8, 8, 1] for name in ("DDPMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler")
    }
    evaluate = subprocess.run(
        [
            *DDPM_ZOO,
            "evaluate",
            str(output),
            "--nll",
            "--nll_images",
            "20",
            "--nll_timesteps",
            "4",
            "--model_kind",
            "digits",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "bits/dim" in evaluate.stdout
    document = json.loads((output / "likelihood.json").read_text())
    terms = document["terms"]
    assert document["num_images"] == 20 and document["timesteps_evaluated"] == 5
    assert document["variance_type"] == "learned_range" and 0 < document["bits_per_dim"] < 20
    assert document["bits_per_dim"] == pytest.approx(sum(terms.values()))
    card = ModelCard.load(output / "README.md")
    assert "| Reverse-process variance | learned (`learned_range`, Improved DDPM's hybrid loss) |" in card.text
    assert [r.metric_value for r in card.data.eval_results if r.metric_type == "bits_per_dim"] == [
        round(document["bits_per_dim"], 4)
    ]

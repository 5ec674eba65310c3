"""Min-SNR-gamma loss weighting (`--snr_gamma`) against its closed form."""

import json

import pytest
import torch
from conftest import launch, tiny_training_args, write_tiny_unet_config
from diffusers import DDPMScheduler

from ddpm_zoo.commands.train import parse_config
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.objectives import (
    IMPORTANCE_UNIFORM_SHARE,
    DiffusionTerms,
    diffusion_loss,
    hybrid_loss,
    importance_proposal,
    min_snr_weights,
)
from ddpm_zoo.training import Trainer


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_min_snr_weights_match_the_closed_form(prediction_type):
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    weights = min_snr_weights(scheduler, prediction_type, gamma=5.0)
    abar = scheduler.alphas_cumprod.double()
    for t in (0, 10, 100, 300, 999):
        snr = float(abar[t] / (1 - abar[t]))
        expected = {"epsilon": min(snr, 5.0) / snr, "v_prediction": min(snr, 5.0) / (snr + 1), "sample": min(snr, 5.0)}
        assert float(weights[t]) == pytest.approx(expected[prediction_type], rel=1e-6)
    if prediction_type == "epsilon":
        # Noisy timesteps (SNR <= gamma) keep the plain loss; clean ones are damped by gamma / SNR.
        assert torch.all(weights[abar / (1 - abar) <= 5.0] == 1.0)
        assert float(weights[0]) == pytest.approx(5.0 * (1 - float(abar[0])) / float(abar[0]), rel=1e-6)


def test_weighted_loss_scales_each_image_by_its_timestep_weight():
    prediction = torch.zeros(3, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), v) for v in (1.0, 2.0, 3.0)])
    t = torch.tensor([0, 1, 2])
    weights = torch.tensor([0.5, 1.0, 0.0])
    assert float(diffusion_loss(prediction, target, t, None)) == pytest.approx((1 + 4 + 9) / 3)
    assert float(diffusion_loss(prediction, target, t, weights)) == pytest.approx((0.5 * 1 + 1.0 * 4 + 0.0) / 3)


@pytest.mark.slow
def test_training_with_snr_gamma_is_recorded_in_the_card(tmp_path):
    config = write_tiny_unet_config(tmp_path / "config")
    output = tmp_path / "run"
    result = launch("train_unconditional.py", tiny_training_args(output, config, steps=3, snr_gamma="5"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["card"]["snr_gamma"] == 5.0
    row = "| Loss weighting | Min-SNR-γ, γ = 5, timesteps importance-sampled by weight |"  # mnist-tiny's default
    assert row in (output / "README.md").read_text()


def test_importance_proposal_mixes_uniform_and_weight_mass():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    weights = min_snr_weights(scheduler, "v_prediction", gamma=5.0).double()
    proposal = importance_proposal(weights, uniform_share=0.25)
    assert float(proposal.sum()) == pytest.approx(1.0, abs=1e-9)
    assert torch.allclose(proposal, 0.25 / 1000 + 0.75 * weights / weights.sum())
    assert float(proposal[weights.argmax()]) > 10 * float(proposal[999])  # near-pure noise is drawn rarely


def test_importance_sampled_loss_has_the_uniform_expectation():
    """E_{t~p}[w(t) / (T p(t)) f(t)] = (1/T) sum_t w(t) f(t): the objective of uniform t, exactly."""
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    weights = min_snr_weights(scheduler, "v_prediction", gamma=5.0).double()
    proposal = importance_proposal(weights, uniform_share=0.25)
    per_timestep_error = torch.linspace(2.0, 0.01, 1000, dtype=torch.float64)
    importance = (proposal * weights / (1000 * proposal) * per_timestep_error).sum()
    uniform = (weights * per_timestep_error).mean()
    assert float(importance) == pytest.approx(float(uniform), rel=1e-12)


def test_trainer_draws_timesteps_from_the_proposal_and_reweights_the_loss(tmp_path):
    config = write_tiny_unet_config(tmp_path / "config")
    argv = ["--preset", "mnist-tiny", "--model_config_name_or_path", str(config), "--output_dir", str(tmp_path / "r")]
    argv += ["--prediction_type", "v_prediction", "--snr_gamma", "5", "--timestep_sampling", "importance"]
    argv += ["--max_train_steps", "2", "--logger", "none", "--self_guidance_clusters", "0"]
    trainer = Trainer(parse_config(argv, conditional=False))
    weights = min_snr_weights(trainer.noise_scheduler, "v_prediction", 5.0)
    proposal = importance_proposal(weights, IMPORTANCE_UNIFORM_SHARE)
    assert torch.allclose(trainer.timestep_probs, proposal)
    assert torch.allclose(trainer.loss_weights, weights / (1000 * proposal))
    drawn = []
    real_forward = trainer.model.forward

    def recording_forward(noisy, t, **kwargs):
        drawn.append(t.clone())
        return real_forward(noisy, t, **kwargs)

    trainer.model.forward = recording_forward
    images = torch.zeros(2000, 1, 8, 8, dtype=torch.uint8)
    for chunk in images.split(500):
        trainer.training_step(chunk, None)
    counts = torch.bincount(torch.cat(drawn), minlength=1000).double()
    below_median = int((proposal.cumsum(0) < 0.5).sum())
    assert float(counts[:below_median].sum() / counts.sum()) == pytest.approx(0.5, abs=0.03)
    assert float(counts[700:].sum() / counts.sum()) < 0.1  # uniform draws would put 30 % there


def test_importance_sampling_needs_loss_weights_to_draw_by():
    with pytest.raises(UserInputError, match="give --snr_gamma"):
        parse_config(["--preset", "cifar10-ddpm", "--timestep_sampling", "importance"], conditional=False)


def test_hybrid_loss_scales_each_bound_term_by_its_importance_factor():
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    terms = DiffusionTerms(scheduler)
    generator = torch.Generator().manual_seed(0)
    x_0 = torch.rand(4, 1, 4, 4, generator=generator) * 2 - 1
    x_t = torch.randn(4, 1, 4, 4, generator=generator)
    prediction = torch.randn(4, 2, 4, 4, generator=generator)
    target = torch.randn(4, 1, 4, 4, generator=generator)
    t = torch.tensor([0, 10, 500, 999])
    plain = hybrid_loss(terms, prediction, target, "epsilon", x_0, x_t, t, None)
    factors = torch.full((1000,), 3.0)
    scaled = hybrid_loss(terms, prediction, target, "epsilon", x_0, x_t, t, None, factors)
    simple = diffusion_loss(prediction[:, :1], target, t, None)
    assert float(scaled - simple) == pytest.approx(3 * float(plain - simple), rel=1e-5)

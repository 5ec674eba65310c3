"""Min-SNR-gamma loss weighting (`--snr_gamma`) against its closed form."""

import json

import pytest
import torch
from conftest import launch, tiny_training_args, write_tiny_unet_config
from diffusers import DDPMScheduler

from ddpm_zoo.objectives import diffusion_loss, min_snr_weights


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
    assert "| Loss weighting | Min-SNR-γ, γ = 5 |" in (output / "README.md").read_text()

"""The optimizer: AdamW from the training options, fused on CPU, with the same update as the reference loop."""

import torch
from conftest import tiny_unet

from ddpm_zoo.config import TrainingConfig
from ddpm_zoo.training import build_optimizer


def test_fused_adamw_on_cpu_takes_the_reference_steps(one_thread):
    config = TrainingConfig(learning_rate=1e-2, adam_beta2=0.99, adam_weight_decay=1e-2)
    fused_model, reference_model = tiny_unet(), tiny_unet()
    fused = build_optimizer(fused_model.parameters(), config, torch.device("cpu"))
    reference = torch.optim.AdamW(
        reference_model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-2, eps=1e-8, foreach=False
    )
    assert fused.defaults["fused"] is True
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        # The same gradients for both, so only the update rule (moments, bias correction, decay) is compared.
        for fused_param, reference_param in zip(fused_model.parameters(), reference_model.parameters(), strict=True):
            gradient = torch.randn(fused_param.shape, generator=generator) * 10 ** torch.randint(-3, 1, ()).item()
            fused_param.grad, reference_param.grad = gradient.clone(), gradient.clone()
        fused.step()
        reference.step()
    for a, b in zip(fused_model.parameters(), reference_model.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    moved = max((a - b).abs().max() for a, b in zip(fused_model.parameters(), tiny_unet().parameters(), strict=True))
    assert moved > 1e-2

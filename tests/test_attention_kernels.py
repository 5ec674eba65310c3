"""`--attention`: the classic and fused attention kernels compute the same function and gradients."""

import pytest
import torch
from conftest import tiny_unet
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from ddpm_zoo.commands.train import build_parser, parse_config
from ddpm_zoo.training import attention_layers, select_attention


def processors(unet) -> set[type]:
    return {type(module.processor) for module in unet.modules() if isinstance(module, Attention)}


@pytest.mark.parametrize(
    ("kernel", "device", "expected", "processor"),
    [
        ("auto", "cpu", "classic", AttnProcessor),
        ("auto", "cuda", "sdpa", AttnProcessor2_0),
        ("sdpa", "cpu", "sdpa", AttnProcessor2_0),
        ("classic", "cuda", "classic", AttnProcessor),
    ],
)
def test_auto_picks_classic_on_cpu_and_sdpa_elsewhere(kernel, device, expected, processor):
    unet = tiny_unet()
    assert select_attention(unet, kernel, torch.device(device)) == expected
    assert processors(unet) == {processor}


def wide_attention_unet() -> UNet2DModel:
    """8 heads over 256 tokens at 16x16 (524,288 scores per image), and over 64 tokens in the mid block."""
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 16),
        layers_per_block=1,
        down_block_types=("AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        attention_head_dim=2,
        norm_num_groups=4,
    )


def test_attention_layers_know_their_token_counts(one_thread):
    unet = wide_attention_unet()
    seen = {}

    def record_tokens(module, args, output) -> None:
        seen[module] = args[0].shape[-2] * args[0].shape[-1]

    for module, _ in attention_layers(unet):
        module.register_forward_hook(record_tokens)
    unet(torch.randn(1, 1, 16, 16), torch.tensor([10]))
    expected = dict(attention_layers(unet))
    assert seen == expected
    assert sorted(expected.values()) == [64, 256, 256, 256]


def test_auto_keeps_sdpa_for_large_score_matrices_on_cpu():
    unet = wide_attention_unet()
    assert select_attention(unet, "auto", torch.device("cpu")) == "classic+sdpa"
    for module, tokens in attention_layers(unet):
        assert isinstance(module.processor, AttnProcessor if tokens == 64 else AttnProcessor2_0)
    assert select_attention(unet, "auto", torch.device("cuda")) == "sdpa"


def test_both_kernels_give_the_same_outputs_and_gradients(one_thread):
    classic, fused = tiny_unet(), tiny_unet()
    select_attention(classic, "classic", torch.device("cpu"))
    select_attention(fused, "sdpa", torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 8, generator=generator)
    t = torch.tensor([0, 10, 500, 999])
    outputs, gradients = [], []
    for unet in (classic, fused):
        out = unet(x, t).sample
        out.square().mean().backward()
        outputs.append(out.detach())
        gradients.append(torch.cat([p.grad.flatten() for p in unet.parameters()]))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gradients[0], gradients[1], atol=1e-5, rtol=1e-4)
    assert gradients[0].abs().max() > 0


def test_attention_option_is_parsed_and_checked(capsys):
    config = parse_config(["--attention", "sdpa"], conditional=False)
    assert config.attention == "sdpa"
    assert parse_config([], conditional=False).attention == "auto"
    with pytest.raises(SystemExit):
        build_parser(conditional=False).parse_args(["--attention", "flash"])
    assert "invalid choice" in capsys.readouterr().err

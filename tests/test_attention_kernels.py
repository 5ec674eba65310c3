"""`--attention`: the classic and fused attention kernels compute the same function and gradients."""

import pytest
import torch
from conftest import tiny_unet
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from ddpm_zoo.config import build_parser, resolve_config
from ddpm_zoo.training import select_attention


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
    config = resolve_config(build_parser(conditional=False).parse_args(["--attention", "sdpa"]), conditional=False)
    assert config.attention == "sdpa"
    assert resolve_config(build_parser(conditional=False).parse_args([]), conditional=False).attention == "auto"
    with pytest.raises(SystemExit):
        build_parser(conditional=False).parse_args(["--attention", "flash"])
    assert "invalid choice" in capsys.readouterr().err

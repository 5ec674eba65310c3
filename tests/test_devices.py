"""Apple MPS, checked without one: the device every command picks, the card's hardware label, and no float64
on the device in evaluation."""

from types import SimpleNamespace

import pytest
import torch

from ddpm_zoo import loading
from ddpm_zoo.commands.main import build_parser
from ddpm_zoo.evaluation.fidelity import dinov2_features, float64_device
from ddpm_zoo.training import describe_hardware


@pytest.mark.parametrize(
    ("cuda", "mps", "expected"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_the_default_device_is_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    assert loading.default_device() == expected


@pytest.mark.parametrize("command", [["sample"], ["visualize", "--kind", "grid"], ["evaluate"], ["export"]])
def test_every_command_leaves_the_device_to_the_default_unless_given(command):
    """None reaches `loading.default_device` (through `load_pipeline`, or directly in evaluate and export)."""
    argv = [command[0], "some-folder", *command[1:]]
    assert build_parser().parse_args(argv).device is None
    assert build_parser().parse_args([*argv, "--device", "mps"]).device == "mps"


def test_an_mps_run_is_labelled_mps():
    accelerator = SimpleNamespace(device=torch.device("mps"), num_processes=1)
    assert describe_hardware(accelerator) == "1 x Apple GPU (MPS)"


@pytest.mark.parametrize(
    ("device", "expected"), [("mps", "cpu"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda:1")]
)
def test_float64_work_leaves_mps_for_the_cpu(device, expected):
    assert float64_device(device) == torch.device(expected)


class DeviceTensor:
    """A tensor on a device without float64: `.double()` fails until it is moved to the CPU."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def cpu(self) -> torch.Tensor:
        return self.tensor

    def double(self):
        raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support float64")


def test_dinov2_features_become_float64_on_the_cpu_only():
    def model(pixel_values: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(pooler_output=DeviceTensor(pixel_values.mean(dim=(2, 3))))

    features = dinov2_features(model, torch.zeros(3, 1, 8, 8, dtype=torch.uint8), "cpu", batch_size=2)
    assert features.dtype == torch.float64 and features.shape == (3, 3)

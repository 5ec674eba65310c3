"""Shared benchmark helpers: the machine's fp32 matmul rate, model FLOPs, peak memory, JSON output."""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm_zoo.commands.train import parse_config
from ddpm_zoo.training import Trainer, cpu_model

RESULTS_DIR = Path(__file__).with_name("results")


# The development machine type's typical fp32 2048^3 matmul rate (AMD EPYC, 2 cores): wall times are scaled to it
# by the rate measured around a run, since the shared cores' speed varies between runs.
NOMINAL_CPU_GFLOPS = 164


def matmul_gflops(seconds: float = 3.0, size: int | None = None, device: str = "cpu", dtype=torch.float32) -> float:
    """Achieved GFLOP/s of a size x size matmul loop (2 n^3 FLOPs each) for about `seconds`; 2048 on a CPU,
    8192 on a GPU (smaller products leave a Hopper GPU's tensor cores partly idle)."""
    size = size or (8192 if torch.device(device).type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.matmul(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        count += 1
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def build_trainer(preset: str, precision: str, batch: int, flags: str = "", unet_config: str | None = None) -> Trainer:
    """ddpm-zoo's `Trainer` for `preset` (or a UNet config file), with extra command-line `flags`.

    The embedded digits, converted and resized to the model's shape, feed every preset: the cost of a
    step does not depend on pixel content, and this runs offline.
    """
    argv = ["--preset", preset, "--train_batch_size", str(batch), "--mixed_precision", precision]
    argv += ["--max_train_steps", "1000000", "--logger", "none", "--output_dir", tempfile.mkdtemp()]
    argv += ["--dataset_name", "mnist-5k", "--convert_channels", "--no-colorize"]
    if unet_config:
        argv += ["--model_config_name_or_path", unet_config]
    argv += flags.split()
    return Trainer(parse_config(argv))


def mfu_peak_gflops(device: str) -> float:
    """The denominator of MFU: the measured matmul rate in fp32 on a CPU, in bf16 on a GPU."""
    return matmul_gflops(device=device, dtype=torch.float32 if device == "cpu" else torch.bfloat16)


def train_flops_per_image(model: torch.nn.Module) -> float:
    """FLOPs of one forward + backward pass per image of the UNet's shape, counted by
    torch.utils.flop_counter (with class labels when the UNet has class embeddings)."""
    config, device = model.config, next(model.parameters()).device
    sample = torch.randn(2, config.in_channels, config.sample_size, config.sample_size, device=device)
    zeros = torch.zeros(sample.shape[0], dtype=torch.long, device=device)
    class_labels = zeros if config.num_class_embeds else None
    with FlopCounterMode(display=False) as counter:
        model(sample, zeros, class_labels).sample.sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / sample.shape[0]


def reset_peak_memory(device: str) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS on Linux."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
        except OSError:
            pass


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    info["torch"] = torch.__version__
    return info


def git_commit() -> str | None:
    """The short hash of the checked-out commit the results come from (None outside a git checkout)."""
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() or None


def write_json(name: str, payload: dict) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max([len(c)] + [len(str(r.get(c, ""))) for r in rows]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))

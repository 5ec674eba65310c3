"""Attention kernels on this machine: diffusers' classic processor vs PyTorch SDPA, one layer's training step.

For each shape (channels, heads, tokens, batch), one diffusers `Attention` layer as UNet2DModel builds it
runs forward + backward under autocast, once with `AttnProcessor` (baddbmm + softmax + bmm) and once with
`AttnProcessor2_0` (scaled_dot_product_attention), interleaved round after round. The ratio classic/SDPA
against the score matrix size per image (heads x tokens^2) is what `--attention auto` decides by
(`ddpm_zoo.training.CLASSIC_ATTENTION_MAX_SCORES`).

    python benchmarks/attention_kernels.py                 # CPU, 2 threads, bf16: about a minute
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from ddpm_zoo.training import CLASSIC_ATTENTION_MAX_SCORES

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, matmul_gflops, print_table, write_json  # noqa: E402

# (channels, heads, side, batch): the presets' and the 1.7M benchmark UNet's layers, and points between.
SHAPES = (
    (64, 1, 7, 64),
    (64, 8, 8, 64),
    (64, 1, 16, 16),
    (256, 1, 16, 8),
    (64, 8, 16, 16),
    (256, 8, 16, 8),
    (128, 16, 16, 8),
    (256, 32, 16, 8),
    (128, 1, 32, 8),
)


def attention_step(channels: int, heads: int, side: int, batch: int, processor, dtype: torch.dtype):
    """A closure running one forward + backward of the layer on a fixed input."""
    torch.manual_seed(0)
    layer = Attention(
        channels,
        heads=heads,
        dim_head=channels // heads,
        norm_num_groups=32,
        residual_connection=True,
        bias=True,
        upcast_softmax=True,
        _from_deprecated_attn_block=True,
    )
    layer.set_processor(processor())
    x = torch.randn(batch, channels, side, side, requires_grad=True)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = layer(x)
        out.float().sum().backward()

    return step


def seconds_per_call(step, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="calls per timed block")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    gflops = matmul_gflops()
    rows = []
    for channels, heads, side, batch in SHAPES:
        steps = {
            "classic": attention_step(channels, heads, side, batch, AttnProcessor, dtype),
            "sdpa": attention_step(channels, heads, side, batch, AttnProcessor2_0, dtype),
        }
        times = {name: [] for name in steps}
        for step in steps.values():
            step()
        for _ in range(args.rounds):
            for name, step in steps.items():
                times[name].append(seconds_per_call(step, args.repeats))
        classic, sdpa = (statistics.median(times[name]) for name in ("classic", "sdpa"))
        scores = heads * (side * side) ** 2
        rows.append(
            {
                "channels": channels,
                "heads": heads,
                "tokens": side * side,
                "batch": batch,
                "scores_per_image": scores,
                "classic_ms": round(classic * 1e3, 1),
                "sdpa_ms": round(sdpa * 1e3, 1),
                "classic_over_sdpa": round(classic / sdpa, 2),
                "auto_picks": "classic" if scores <= CLASSIC_ATTENTION_MAX_SCORES else "sdpa",
            }
        )
        print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    print(f"\nfp32 matmul {gflops:.0f} GFLOP/s in this run; {args.threads} threads, {args.precision}")
    payload = {"machine": machine(), "matmul_gflops": gflops, "threads": args.threads, "precision": args.precision}
    path = write_json("attention_kernels-cpu.json", payload | {"rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

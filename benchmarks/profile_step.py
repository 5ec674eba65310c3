"""Where a training step's time goes: ddpm-zoo's optimizer step under torch.profiler, by kernel category.

On a GPU every CUDA kernel of the profiled steps is put in one category (convolution, matmul, attention,
fused Inductor/Triton kernels, normalization, optimizer and EMA, layout transforms, copies, other elementwise) and
the table shows device milliseconds per step and the share of the device's busy time; the summary gives the
step's wall time, how much of it the device was idle, the step's MFU against the bf16 (GPU) or fp32 (CPU)
matmul rate measured in the same run, and the rate the matmul-like work itself ran at (the model's FLOPs,
all of them convolutions, matmuls and attention, over the time in those kernels). A low step MFU with a high
matmul-like rate says the memory-bound kernels and idle time are the gap; a low matmul-like rate says the
convolutions themselves are slow. On a CPU the same categories apply to the aten operators' self time.

    python benchmarks/profile_step.py --preset cifar10-ddpm --precision bf16 --batch 2304 \\
        --ours_flags="--compile --channels_last" --trace /tmp/trace.json
"""

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))

from common import build_trainer, machine, mfu_peak_gflops, print_table, train_flops_per_image, write_json  # noqa: E402

# First match wins; patterns are searched in the lower-cased kernel or operator name. Inductor names its
# kernels after the operators it fused (triton_poi_fused_convolution_0 is a bias add), except its max-autotune
# templates (triton_tem_*), which are the convolution or matmul itself.
CATEGORIES = (
    ("convolution", r"^triton_tem\w*conv"),
    ("matmul", r"^triton_tem"),
    ("fused (Inductor)", r"^triton|cpp_fused|compiledfunction|compiled region|compiledfxgraph"),
    ("layout transforms", r"nchwtonhwc|nhwctonchw"),
    ("attention", r"flash|fmha|sdpa|attention|softmax"),
    ("convolution", r"conv|dgrad|wgrad|fprop|implicit_gemm|cudnn"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|splitkreduce|addmm|aten::mm$|aten::bmm|matmul|aten::linear"),
    ("optimizer and EMA", r"adam|multi_tensor|foreach"),
    ("normalization", r"group_?norm|layer_?norm|batch_?norm|rowwisemoments|welford"),
    ("copies and fills", r"memcpy|memset|copy|fill|aten::cat"),
    ("other elementwise and reductions", r"elementwise|vectorized|reduce|dropout|aten::"),
)
MATMUL_LIKE = ("convolution", "matmul", "attention")


def categorise(name: str) -> str:
    lowered = name.lower()
    for category, pattern in CATEGORIES:
        if re.search(pattern, lowered):
            return category
    return "other"


def timed_events(prof: profile, device: str) -> list[tuple[str, float]]:
    """(name, microseconds) of every CUDA kernel on a GPU; of every operator's self CPU time on a CPU."""
    if device == "cuda":
        return [(e.name, e.time_range.elapsed_us()) for e in prof.events() if e.device_type == DeviceType.CUDA]
    return [(e.key, e.self_cpu_time_total) for e in prof.key_averages() if e.self_cpu_time_total > 0]


def breakdown(events: list[tuple[str, float]], steps: int) -> tuple[list[dict], list[dict]]:
    """Rows per category (ms per step, share of busy time) and the ten longest kernels or operators."""
    busy = sum(us for _, us in events) or 1.0
    per_category: dict[str, float] = {}
    per_name: dict[str, float] = {}
    for name, us in events:
        category = categorise(name)
        per_category[category] = per_category.get(category, 0.0) + us
        per_name[name] = per_name.get(name, 0.0) + us
    rows = [
        {"category": category, "ms_per_step": round(us / steps / 1e3, 3), "share_pct": round(100 * us / busy, 1)}
        for category, us in sorted(per_category.items(), key=lambda item: -item[1])
    ]
    top = [
        {"name": name[:110], "category": categorise(name), "ms_per_step": round(us / steps / 1e3, 3)}
        for name, us in sorted(per_name.items(), key=lambda item: -item[1])[:10]
    ]
    return rows, top


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10-ddpm")
    parser.add_argument("--unet_config", help="profile this UNet2DModel config.json on the preset's recipe")
    parser.add_argument("--precision", default="bf16", choices=("no", "bf16", "fp16"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ours_flags", default="", help='extra ddpm-zoo options, e.g. "--compile --channels_last"')
    parser.add_argument("--warmup", type=int, default=3, help="steps before timing (compilation happens here)")
    parser.add_argument("--steps", type=int, default=5, help="steps timed, then as many profiled")
    parser.add_argument("--trace", help="also write a Chrome trace of the profiled steps here")
    parser.add_argument("--output", default=None, help="JSON name in benchmarks/results/ (or a path)")
    args = parser.parse_args(argv)

    from ddpm_zoo.training import LossMeter

    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup_start = time.perf_counter()
    trainer = build_trainer(args.preset, args.precision, args.batch, args.ours_flags, args.unet_config)
    meter = LossMeter(torch.zeros((), device=trainer.accelerator.device))
    steps = trainer.optimizer_steps(0, meter)

    def run(n: int) -> float:
        """Seconds per step over `n` steps, the device drained at both ends."""
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n):
            next(steps)
        float(meter.running)
        return (time.perf_counter() - start) / n

    run(args.warmup)
    setup_s = time.perf_counter() - setup_start
    step_s = run(args.steps)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        profiled_step_s = run(args.steps)
    if args.trace:
        prof.export_chrome_trace(args.trace)

    rows, top = breakdown(timed_events(prof, device), args.steps)
    flops_per_step = train_flops_per_image(trainer.unet) * args.batch
    peak = mfu_peak_gflops(device) * 1e9
    busy_s = sum(row["ms_per_step"] for row in rows) / 1e3
    matmul_like_s = sum(row["ms_per_step"] for row in rows if row["category"] in MATMUL_LIKE) / 1e3
    summary = {
        "preset": args.preset if not args.unet_config else Path(args.unet_config).stem,
        "precision": args.precision,
        "batch": args.batch,
        "flags": args.ours_flags,
        "setup_s": round(setup_s, 1),
        "step_ms": round(1e3 * step_s, 2),
        "profiled_step_ms": round(1e3 * profiled_step_s, 2),
        "busy_ms_per_step": round(1e3 * busy_s, 2),
        "idle_pct": round(100 * max(0.0, 1 - busy_s / profiled_step_s), 1) if device == "cuda" else None,
        "gflop_per_step": round(flops_per_step / 1e9, 1),
        "matmul_gflops": round(peak / 1e9, 1),
        "mfu_pct": round(100 * flops_per_step / step_s / peak, 1),
        "matmul_like_rate_pct_of_peak": round(100 * flops_per_step / matmul_like_s / peak, 1)
        if matmul_like_s
        else None,
    }
    print_table(rows, ["category", "ms_per_step", "share_pct"])
    print()
    print_table(top, ["ms_per_step", "category", "name"])
    print()
    for key, value in summary.items():
        print(f"{key}: {value}")
    name = args.output or f"profile_step-{summary['preset']}-{args.precision}-b{args.batch}-{device}.json"
    path = write_json(name, {"machine": machine(), "summary": summary, "categories": rows, "top": top})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

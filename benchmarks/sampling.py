"""Sampling throughput: images/s per preset, scheduler and step count, beside the machine's fp32 matmul rate.

Each preset's UNet is randomly initialised (speed does not depend on the weights) inside the pipeline its
training run saves: mnist-tiny's self-guided one (uniform cluster sizes; guidance 0 is its unguided
network), colored-mnist's class-conditional one, cifar10-ddpm's plain one. Cases run interleaved,
round after round, each round starting with a 2048x2048 fp32 matmul loop, so a busy machine shows up as a
low GFLOP/s in the same rounds as its slow cases. Runs of more than `--max_timed_steps` steps (DDPM's
1000) are timed over their first steps and extrapolated: every step costs the same (one UNet call and an
O(1) scheduler update), which the table's s/step column lets you check against the short runs.

    python benchmarks/sampling.py                      # CPU, one thread: about 2 minutes
    python benchmarks/sampling.py --device cuda --rounds 5 --batch_scale 8
"""

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ddpm_zoo.config import TrainingConfig
from ddpm_zoo.introspection import default_guidance_scale, is_conditional
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.presets import CONDITIONAL_PRESET, PRESETS
from ddpm_zoo.schedulers import make_scheduler
from ddpm_zoo.training import cpu_model

sys.path.insert(0, str(Path(__file__).parent))
from common import matmul_gflops  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Case:
    """One measured configuration; `guidance_scale` None samples at the pipeline's default guidance."""

    preset: str
    scheduler: str
    steps: int
    batch_size: int
    guidance_scale: float | None = None


DEFAULT_CASES = (
    Case("mnist-tiny", "ddpm", 1000, 8),
    Case("mnist-tiny", "ddim", 50, 8),
    Case("mnist-tiny", "dpmsolver", 20, 8),
    Case("mnist-tiny", "euler", 50, 8),
    Case("mnist-tiny", "unipc", 20, 8),
    Case("mnist-tiny", "dpmsolver", 20, 8, 0.0),
    Case("colored-mnist", "ddpm", 1000, 8, 3.0),
    Case("colored-mnist", "ddim", 50, 8, 3.0),
    Case("colored-mnist", "dpmsolver", 20, 8, 3.0),
    Case("colored-mnist", "dpmsolver", 20, 8, 1.0),
    Case("cifar10-ddpm", "ddim", 10, 2),
    Case("cifar10-ddpm", "dpmsolver", 10, 2),
)


class _StopSampling(Exception):
    """Raised from the step callback once enough steps have been timed."""


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_pipeline(preset: str, device: torch.device):
    """The preset's UNet, randomly initialised (seeded), in the pipeline its training run saves."""
    torch.manual_seed(0)
    config = dict(PRESETS[preset].unet)
    scheduler = DDPMScheduler(**PRESETS[preset].scheduler)
    clusters = PRESETS[preset].training.get("self_guidance_clusters", 0)
    if preset == CONDITIONAL_PRESET:
        config["num_class_embeds"] = len(PRESETS[preset].class_names) + 1
        pipeline = ClassConditionalDDPMPipeline(unet=UNet2DModel(**config), scheduler=scheduler)
    elif clusters:
        config["num_class_embeds"] = clusters + 1
        pipeline = UnconditionalDDPMPipeline(
            unet=UNet2DModel(**config),
            scheduler=scheduler,
            cluster_sizes=[1] * clusters,
            self_guidance_scale=TrainingConfig.self_guidance_scale,
        )
    else:
        pipeline = UnconditionalDDPMPipeline(unet=UNet2DModel(**config), scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def run_case(pipeline, case: Case, device: torch.device, max_timed_steps: int) -> tuple[float, int]:
    """Seconds for the first min(steps, max_timed_steps) steps of `case` (the whole run when shorter)."""
    pipeline.scheduler = make_scheduler(case.scheduler, DDPMScheduler(**PRESETS[case.preset].scheduler).config)
    timed_steps = min(case.steps, max_timed_steps)

    def stop_after(pipe, i, t, callback_kwargs):
        if i + 1 == timed_steps and timed_steps < case.steps:
            raise _StopSampling
        return callback_kwargs

    kwargs = {
        "num_inference_steps": case.steps,
        "generator": torch.Generator().manual_seed(0),
        "output_type": "pt",
        "callback_on_step_end": stop_after,
    }
    if is_conditional(pipeline):
        kwargs["class_labels"] = [i % 10 for i in range(case.batch_size)]
    else:
        kwargs["batch_size"] = case.batch_size
    if case.guidance_scale is not None:
        kwargs["guidance_scale"] = case.guidance_scale
    synchronize(device)
    start = time.perf_counter()
    try:
        pipeline(**kwargs)
    except _StopSampling:
        pass
    synchronize(device)
    return time.perf_counter() - start, timed_steps


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on shared 2-core machines two threads ran up to 60x slower "
        "whenever other jobs were running; use the core count on a quiet machine)",
    )
    parser.add_argument("--max_timed_steps", type=int, default=50)
    parser.add_argument("--batch_scale", type=int, default=1, help="multiply every case's batch size")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to run")
    parser.add_argument("--output", default=None, help="JSON file (default: results/sampling-DEVICE.json)")
    return parser.parse_args(argv)


def summarise(case: Case, runs: list[tuple[float, int]], pipeline) -> dict:
    """Median images/s over rounds, at the case's full step count, with the guidance weight it sampled at
    (the pipeline's default where the case gives none; None for an unguided pipeline)."""
    per_step = [seconds / steps for seconds, steps in runs]
    images_per_s = [case.batch_size / (s * case.steps) for s in per_step]
    return {
        **asdict(case),
        "guidance_scale": default_guidance_scale(pipeline) if case.guidance_scale is None else case.guidance_scale,
        "timed_steps": runs[0][1],
        "extrapolated": runs[0][1] < case.steps,
        "seconds_per_step": per_step,
        "images_per_s": images_per_s,
        "images_per_s_median": statistics.median(images_per_s),
    }


def print_table(results: list[dict], gflops: list[float]) -> None:
    print(f"fp32 matmul 2048^2: {', '.join(f'{g:.1f}' for g in gflops)} GFLOP/s per round")
    header = f"{'preset':14} {'scheduler':10} {'steps':>5} {'w':>4} {'batch':>5} {'images/s':>9} "
    print(header + f"{'min..max':>17} {'s/step':>8}  note")
    for r in results:
        w = "-" if r["guidance_scale"] is None else f"{r['guidance_scale']:g}"
        spread = f"{min(r['images_per_s']):.3g}..{max(r['images_per_s']):.3g}"
        note = f"timed {r['timed_steps']} steps" if r["extrapolated"] else ""
        print(
            f"{r['preset']:14} {r['scheduler']:10} {r['steps']:>5} {w:>4} {r['batch_size']:>5} "
            f"{r['images_per_s_median']:>9.3g} {spread:>17} {statistics.median(r['seconds_per_step']):>8.4f}  {note}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    presets = args.presets.split(",")
    cases = [
        Case(c.preset, c.scheduler, c.steps, c.batch_size * args.batch_scale, c.guidance_scale)
        for c in DEFAULT_CASES
        if c.preset in presets
    ]
    pipelines = {}
    for case in cases:
        if case.preset not in pipelines:
            pipelines[case.preset] = build_pipeline(case.preset, device)
            run_case(pipelines[case.preset], Case(case.preset, "ddim", 2, case.batch_size), device, 2)
    runs: dict[Case, list[tuple[float, int]]] = {case: [] for case in cases}
    gflops = []
    started = time.perf_counter()
    for _ in range(args.rounds):
        gflops.append(matmul_gflops(seconds=2.0, device=device))
        for case in cases:
            pipeline = pipelines[case.preset]
            runs[case].append(run_case(pipeline, case, device, args.max_timed_steps))
    results = [summarise(case, runs[case], pipelines[case.preset]) for case in cases]
    print_table(results, gflops)
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "rounds": args.rounds,
        "wall_seconds": time.perf_counter() - started,
        "matmul_fp32_gflops": gflops,
        "results": results,
    }
    output = Path(args.output) if args.output else RESULTS / f"sampling-{device.type}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

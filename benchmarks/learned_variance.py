"""Learned against fixed variance: what `--variance_type learned_range` costs per training step and what it
buys in likelihood and in few-step ancestral sampling.

`step_cost` builds ddpm-zoo's Trainer twice for a preset, fixed and learned variance, on the same data and
batch, and alternates timed blocks of optimizer steps (fixed, learned, fixed, ...) so both see the same
machine load; it reports the median seconds per step of each and their ratio.

`quality` takes trained folders of one preset (fixed and learned variance, same budget), loads each as a
user does (`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`), and measures the variational
bound in bits/dim on the digit classifier's test split (docs/evaluation.md) and recognisability (conditional
accuracy for class-conditional models) under ancestral DDPM at 25-1000 steps and DPM-Solver++ at 20, with the
schedulers swapped in with plain `from_config`, at the pipeline's default guidance.

    python benchmarks/learned_variance.py step_cost --presets mnist-tiny,colored-mnist
    python benchmarks/learned_variance.py quality runs/mnist-tiny runs/mnist-tiny-learned --output NAME.json
"""

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from ddpm_zoo.evaluation import evaluate_pipeline, format_table, make_context
from ddpm_zoo.evaluation.likelihood import describe_bound, likelihood_reference, pipeline_bound
from ddpm_zoo.training import LossMeter, cpu_model

sys.path.insert(0, str(Path(__file__).parent))
from common import build_trainer, git_commit, matmul_gflops, write_json  # noqa: E402

DDPM_STEPS = "25,50,100,250,1000"


def step_cost(preset: str, batch: int, rounds: int, steps: int) -> dict:
    """Median seconds per optimizer step of fixed and learned variance, interleaved."""
    runs = {}
    for variance_type in ("fixed_small", "learned_range"):
        trainer = build_trainer(preset, "no", batch, f"--variance_type {variance_type}")
        meter = LossMeter(torch.zeros((), device=trainer.accelerator.device))
        runs[variance_type] = (trainer.optimizer_steps(0, meter), meter)

    def run(variance_type: str, count: int) -> float:
        loop, meter = runs[variance_type]
        start = time.perf_counter()
        for _ in range(count):
            next(loop)
        float(meter.running)
        return (time.perf_counter() - start) / count

    for variance_type in runs:
        run(variance_type, 2)  # warm-up
    timings = {variance_type: [] for variance_type in runs}
    for _ in range(rounds):
        for variance_type in runs:
            timings[variance_type].append(run(variance_type, steps))
    fixed, learned = (statistics.median(timings[v]) for v in ("fixed_small", "learned_range"))
    return {
        "preset": preset,
        "batch": batch,
        "rounds": rounds,
        "steps_per_block": steps,
        "s_per_step_fixed": round(fixed, 4),
        "s_per_step_learned": round(learned, 4),
        "learned_over_fixed": round(learned / fixed, 3),
    }


def quality(
    folder: str, num_samples: int, batch_size: int, nll_images: int, nll_timesteps: int, ddpm_steps: list[int]
) -> dict:
    """The bound and the sampling cells of one trained folder."""
    pipeline = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)
    reference = likelihood_reference(pipeline, None)
    started = time.perf_counter()
    bound = pipeline_bound(pipeline, reference.images[:nll_images], nll_timesteps, batch_size)
    print(f"{folder}: {describe_bound(bound)} ({time.perf_counter() - started:.0f} s)", flush=True)
    context = make_context(pipeline, extra=False)
    rows = []
    cells = [("ddpm", steps) for steps in ddpm_steps] + [("dpmsolver", 20)]
    for scheduler, steps in cells:  # each swapped in with plain `from_config` (ddpm_zoo.schedulers)
        rows.append(evaluate_pipeline(pipeline, num_samples, batch_size, scheduler, steps, None, 0, context=context))
        print(format_table(rows[-1:], header=len(rows) == 1), flush=True)
    return {
        "model": folder,
        "variance_type": pipeline.scheduler.config.get("variance_type", "fixed_small"),
        "bound": bound.as_dict(),
        "rows": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cost = commands.add_parser("step_cost", help="seconds per training step, fixed vs learned, interleaved")
    cost.add_argument("--presets", default="mnist-tiny,colored-mnist")
    cost.add_argument("--batch", type=int, default=64)
    cost.add_argument("--rounds", type=int, default=7)
    cost.add_argument("--steps", type=int, default=10)
    cost.add_argument("--output", default="learned_variance-step_cost-cpu.json")
    scores = commands.add_parser("quality", help="bits/dim and sampling of trained models")
    scores.add_argument("models", nargs="+", help="run folders (fixed and learned variance, same preset and budget)")
    scores.add_argument("--num_samples", type=int, default=200)
    scores.add_argument("--batch_size", type=int, default=200)
    scores.add_argument("--nll_images", type=int, default=500)
    scores.add_argument("--nll_timesteps", type=int, default=100)
    scores.add_argument("--ddpm_steps", default=DDPM_STEPS, help=f"ancestral DDPM step counts (default {DDPM_STEPS})")
    scores.add_argument("--output", required=True, help="file name in benchmarks/results/")
    args = parser.parse_args()
    record = {
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "machine": {"cpu_model": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "matmul_fp32_gflops": round(matmul_gflops(), 1),
    }
    if args.command == "step_cost":
        record["rows"] = [step_cost(p, args.batch, args.rounds, args.steps) for p in args.presets.split(",")]
        for row in record["rows"]:
            print(row)
    else:
        record["num_samples"], record["nll_images"] = args.num_samples, args.nll_images
        record["models"] = [
            quality(
                folder,
                args.num_samples,
                args.batch_size,
                args.nll_images,
                args.nll_timesteps,
                [int(steps) for steps in args.ddpm_steps.split(",")],
            )
            for folder in args.models
        ]
    print(f"written to {write_json(args.output, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

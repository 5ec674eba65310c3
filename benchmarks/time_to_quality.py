"""Wall time until a preset's default run reaches the evaluation targets.

Runs the real training script (`accelerate launch train_unconditional.py` or `train_conditional.py`)
with a checkpoint every `--every` steps, then scores each checkpoint's EMA weights with
`ddpm_zoo.evaluation` (recognisability >= 0.90 for mnist-tiny, where real held-out digits score 0.934;
conditional digit accuracy >= 0.95 for
colored-mnist) and reports the training seconds recorded in the first checkpoint that meets it.

    python benchmarks/time_to_quality.py                         # mnist-tiny, default recipe
    python benchmarks/time_to_quality.py --preset colored-mnist
    python benchmarks/time_to_quality.py --output_dir RUN --skip_training   # score an existing run
"""

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import NOMINAL_CPU_GFLOPS, git_commit, machine, matmul_gflops, print_table, write_json  # noqa: E402

from ddpm_zoo import evaluation  # noqa: E402
from ddpm_zoo.allocator import keep_freed_memory  # noqa: E402
from ddpm_zoo.checkpoints import RUN_RECORD, checkpoint_step, complete_checkpoints  # noqa: E402
from ddpm_zoo.export import read_checkpoint, rebuild_pipeline  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"mnist-tiny": ("recognisability", 0.90), "colored-mnist": ("conditional_accuracy", 0.95)}


def training_loop(output: Path) -> dict:
    """The optimizer steps' share of a run, from the summary training wrote: the loop's seconds (sample grids and
    checkpoints due during it included) and steps per second, so a run on slowed cores shows against the matmul
    rate."""
    summary = json.loads((output / "training_summary.json").read_text())
    seconds = summary["wall_time_s"]
    return {"training_loop_s": round(seconds, 1), "steps_per_s": round(summary["global_step"] / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="mnist-tiny", choices=sorted(TARGETS))
    parser.add_argument("--output_dir", default="time-to-quality-run")
    parser.add_argument(
        "--every", type=int, default=250, help="checkpoint (and score) every N steps; 0: the bare command, timed only"
    )
    parser.add_argument("--max_train_steps", type=int, help="default: the preset's")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument("--score_every", type=int, default=250, help="score checkpoints whose step is a multiple")
    parser.add_argument("--output", help="JSON file name in benchmarks/results/ (default: by preset)")
    parser.add_argument("--skip_training", action="store_true", help="only score the checkpoints of --output_dir")
    args = parser.parse_args()
    keep_freed_memory()  # for the scoring in this process, as `ddpm-zoo evaluate` does; the training runs apart
    output = Path(args.output_dir)
    gflops = matmul_gflops()
    run = {}
    if not args.skip_training:
        script = "train_conditional.py" if args.preset == "colored-mnist" else "train_unconditional.py"
        command = ["accelerate", "launch", str(REPO / script), "--preset", args.preset, "--output_dir", str(output)]
        if args.every:
            command += ["--checkpointing_steps", str(args.every), "--checkpoints_total_limit", "1000"]
        if args.max_train_steps:
            command += ["--max_train_steps", str(args.max_train_steps)]
        start = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - start
        during = (gflops + matmul_gflops()) / 2  # the rate before and after the run
        run = {"run_wall_s": round(wall, 1), "matmul_gflops_around_run": round(during, 1)}
        run["run_wall_s_at_nominal_speed"] = round(wall * during / NOMINAL_CPU_GFLOPS, 1)
        run.update(training_loop(output))
        print(
            f"training run: {wall:.0f} s wall (start-up, grids and saving included); fp32 matmul {during:.0f} GFLOP/s "
            f"around it: {run['run_wall_s_at_nominal_speed']:.0f} s at the nominal {NOMINAL_CPU_GFLOPS} GFLOP/s"
        )
    record = json.loads((output / RUN_RECORD).read_text())
    metric, target = TARGETS[record["preset"]]
    rows = []
    # The bare command's own checkpoints are not scored: its published folder is, by sampler_matrix.py.
    scored = complete_checkpoints(output) if args.every or args.skip_training else []
    for checkpoint in scored:
        if checkpoint_step(checkpoint) % args.score_every:
            continue
        # What the run would publish at that step (`ddpm-zoo export`'s pipeline).
        saved = read_checkpoint(checkpoint)
        state = saved.state
        pipeline = rebuild_pipeline(saved)
        scores = evaluation.evaluate_pipeline(
            pipeline, num_samples=args.num_samples, scheduler="dpmsolver", num_inference_steps=25, extra=False
        )
        rows.append(
            {
                "step": state["global_step"],
                "train_s": round(state.get("train_seconds", float("nan"))),
                "guidance": scores["guidance_scale"],
                metric: round(scores[metric], 4),
                "fd_digits": round(scores["fd_digits"], 2),
                "meets_target": scores[metric] >= target,
            }
        )
        print_table(rows[-1:], list(rows[-1]))
    reached = next((row for row in rows if row["meets_target"]), None)
    print()
    if rows:
        print_table(rows, list(rows[0]))
    if not rows:
        summary = "no checkpoint scored (score the published folder with benchmarks/sampler_matrix.py)"
    elif reached:
        summary = f"{metric} >= {target}: reached at step {reached['step']} after {reached['train_s']} s of training"
    else:
        summary = f"{metric} >= {target}: not reached"
    print(f"\n{summary} (fp32 matmul {gflops:.0f} GFLOP/s in this run)")
    payload = {"date": datetime.date.today().isoformat(), "commit": git_commit(), "machine": machine()}
    payload |= {"matmul_gflops": gflops, "preset": record["preset"], "target": [metric, target]}
    payload |= run
    payload |= {"num_samples": args.num_samples, "sampler": "dpmsolver 25 steps", "rows": rows, "summary": summary}
    path = write_json(args.output or f"time_to_quality-{record['preset']}-cpu.json", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Sample quality of trained models under every diffusers scheduler, swapped in the plain diffusers way.

Each model folder is loaded as a user loads it, `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)`, and each scheduler is built with `SchedulerClass.from_config(pipe.scheduler.config)`
and nothing else. Every cell samples the same seeds (image i uses seed i) at the pipeline's default guidance
and is scored by the evaluation protocol (docs/evaluation.md): recognisability, conditional accuracy for
class-conditional models, FD in the shipped digit classifier's features, samples/s. `--guidance` adds rows at
other weights (e.g. 0 and 1) for chosen cells, so the gain and the cost of guidance are visible.

    python benchmarks/sampler_matrix.py ddpm-mnist-tiny-output --num_samples 500
    python benchmarks/sampler_matrix.py ddpm-colored-mnist-output --cells ddim:50,dpmsolver:20 --guidance 0,1

`--without_range_keeping` samples with the pipelines' x_0 bound switched off, to show what it does. A model
conditioned on digit and color is asked for both, and for each with the other left free (`--conditions`);
`--conjunction` composes its guidance as Liu et al.'s conjunction instead of the pipeline's chain, to compare.
"""

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import diffusers
import torch
from diffusers import DiffusionPipeline

from ddpm_zoo.allocator import keep_freed_memory
from ddpm_zoo.data import load_mnist_5k_arrays
from ddpm_zoo.evaluation import evaluate_pipeline, format_table, make_context
from ddpm_zoo.evaluation.classifier import classifier_split, classify
from ddpm_zoo.evaluation.metrics import frechet_distance_features
from ddpm_zoo.evaluation.protocol import CONDITIONS
from ddpm_zoo.introspection import takes_color_labels
from ddpm_zoo.pipelines import joint_label_index
from ddpm_zoo.training import cpu_model

sys.path.insert(0, str(Path(__file__).parent))
from common import git_commit, matmul_gflops, write_json  # noqa: E402

# (scheduler, steps): the samplers and step counts diffusers users reach for first.
DEFAULT_CELLS = (
    ("ddpm", 1000),
    ("ddpm", 250),
    ("ddpm", 100),
    ("ddim", 50),
    ("ddim", 25),
    ("dpmsolver", 20),
    ("dpmsolver", 25),
    ("dpmsolver-sde", 20),
    ("dpmsolver-singlestep", 20),
    ("unipc", 20),
    ("deis", 20),
    ("euler", 50),
    ("euler-ancestral", 50),
    ("heun", 25),
    ("lms", 50),
    ("pndm", 50),
)


def parse_cells(text: str | None) -> list[tuple[str, int]]:
    """'ddim:50,dpmsolver:20' -> [('ddim', 50), ('dpmsolver', 20)]; None -> every default cell."""
    if not text:
        return list(DEFAULT_CELLS)
    cells = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        cells.append((name, int(steps)))
    return cells


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a trained pipeline folder (or Hub id)")
    parser.add_argument("--cells", help="comma list of SCHEDULER:STEPS (default: the full matrix)")
    parser.add_argument("--num_samples", type=int, default=500)
    parser.add_argument(
        "--max_samples_per_step_budget",
        type=int,
        default=0,
        help="cap each cell's samples so that samples x steps stays within this budget (0: no cap)",
    )
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--guidance", help="comma list of extra guidance weights, sampled for --guidance_cells")
    parser.add_argument("--guidance_cells", default="dpmsolver:20,ddim:50")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--without_range_keeping", action="store_true")
    parser.add_argument(
        "--conditions",
        default=",".join(CONDITIONS),
        help="what a model conditioned on digit and color is asked for, comma list (default: all)",
    )
    parser.add_argument(
        "--conjunction",
        action="store_true",
        help="digit and color models: guide by eps_null + w (eps_digit - eps_null) + w_color (eps_color - eps_null)",
    )
    parser.add_argument("--output", help="JSON file name in benchmarks/results/")
    return parser.parse_args(argv)


def use_conjunction(pipeline: DiffusionPipeline) -> None:
    """Replace the pipeline's guidance for digit and color by Liu et al.'s (2022) conjunction, which guides
    towards each label on its own: eps_null + w (eps(digit) - eps_null) + w_color (eps(color) - eps_null)."""
    classes, colors_count = pipeline.num_classes, pipeline.num_colors

    def conjunction(model_input, t, labels, guidance_scale, colors=None, color_guidance_scale=0.0):
        rows = [
            torch.full_like(labels, joint_label_index(None, None, classes, colors_count)),
            joint_label_index(labels, None, classes, colors_count),
            joint_label_index(None, colors, classes, colors_count),
        ]
        null, digit, color = pipeline.unet(torch.cat([model_input] * 3), t, class_labels=torch.cat(rows)).sample.chunk(
            3
        )
        digit_weight = (guidance_scale * (labels >= 0)).view(-1, 1, 1, 1)
        color_weight = (color_guidance_scale * (colors >= 0)).view(-1, 1, 1, 1)
        return null + digit_weight * (digit - null) + color_weight * (color - null)

    pipeline.guided_prediction = conjunction


def held_out_real_fd(counts: set[int], seed: int = 0) -> dict[int, float]:
    """FD of `n` of the digit classifier's 500 held-out real digits (a seeded draw) against its 4,500 training
    digits, for each n in `counts`: what real data scores at a cell's sample count (500: 0.21, docs/evaluation.md)."""
    arrays, labels = load_mnist_5k_arrays()
    train, test = classifier_split(torch.from_numpy(labels))
    shuffled = test[torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))]
    _, features = classify(torch.from_numpy(arrays).unsqueeze(1))
    return {n: frechet_distance_features(features[shuffled[:n]], features[train]) for n in counts}


def cell_samples(args: argparse.Namespace, steps: int) -> int:
    if not args.max_samples_per_step_budget:
        return args.num_samples
    return max(args.batch_size // 4, min(args.num_samples, args.max_samples_per_step_budget // steps))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    keep_freed_memory()  # as `ddpm-zoo evaluate` does
    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = DiffusionPipeline.from_pretrained(args.model, trust_remote_code=True)
    if args.without_range_keeping:
        pipeline.keep_in_range = lambda model_output, sample, t: model_output
    if args.conjunction:
        use_conjunction(pipeline)
    context = make_context(pipeline, digits=True, reference=None, extra=False)
    settings = [(name, steps, None) for name, steps in parse_cells(args.cells)]
    if args.guidance:
        weights = [float(w) for w in args.guidance.split(",")]
        settings += [(name, steps, w) for name, steps in parse_cells(args.guidance_cells) for w in weights]
    counts = {cell_samples(args, steps) for _, steps, _ in settings}
    real_fd = held_out_real_fd(counts) if pipeline.unet.config.in_channels == 1 else {}
    gflops_before = matmul_gflops(seconds=2.0)
    started = time.perf_counter()
    conditions = args.conditions.split(",") if takes_color_labels(pipeline) else [None]
    rows = []
    for name, steps, guidance_scale in settings:
        for requested in conditions:
            row = evaluate_pipeline(
                pipeline,
                num_samples=cell_samples(args, steps),
                batch_size=args.batch_size,
                scheduler=name,
                num_inference_steps=steps,
                guidance_scale=guidance_scale,
                extra=False,
                context=context,
                progress=False,
                conditions=requested,
            )
            if row["num_samples"] in real_fd:
                row["fd_over_real_fd"] = row["fd_digits"] / real_fd[row["num_samples"]]
            rows.append(row)
            print(format_table([row], header=len(rows) == 1, like=rows[:1]), flush=True)
    report = {
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(),
        "model": args.model,
        "pipeline": type(pipeline).__name__,
        "loaded_with": "DiffusionPipeline.from_pretrained(model, trust_remote_code=True)",
        "scheduler_swap": "SchedulerClass.from_config(pipe.scheduler.config)",
        "range_keeping": not args.without_range_keeping,
        "guidance_composition": "conjunction" if args.conjunction else "the pipeline's",
        "saved_scheduler_config": dict(pipeline.scheduler.config),
        "machine": {"cpu_model": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "diffusers": diffusers.__version__,
        "matmul_fp32_gflops": [gflops_before, matmul_gflops(seconds=2.0)],
        "wall_seconds": time.perf_counter() - started,
        "held_out_real_fd": {str(n): fd for n, fd in sorted(real_fd.items())},
        "rows": rows,
    }
    name = args.output or f"sampler_matrix-{Path(args.model.rstrip('/')).name}.json"
    print(f"wrote {write_json(name, json.loads(json.dumps(report, default=str)))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

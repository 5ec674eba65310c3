"""Training throughput: ddpm-zoo's loop vs an official-example-style baseline, interleaved, as ratios.

Data: the embedded digits converted and resized to each model's shape (a step's cost does not depend on
pixel content), so every preset runs offline.

For each preset (or a UNet config file) and precision, one subprocess builds ddpm-zoo's `Trainer`
and the baseline on the same UNet config, data and batch size, then alternates timed blocks of steps
(ours, baseline, ours, baseline, ...) so both see the same machine load. It reports img/s, the ratio,
FLOPs per image (forward + backward, torch.utils.flop_counter), achieved FLOP/s as a share of the
fp32 matmul rate measured in the same run (MFU), and peak memory.

On a GPU, cuDNN keeps one algorithm per convolution shape and layout for the process, however it was chosen:
where both sides run the same layout (ddpm-zoo without --channels_last), the baseline reuses the algorithms
ddpm-zoo's --cudnn_benchmark timed during its warm-up, which flatters the baseline, not ddpm-zoo.

    python benchmarks/train_throughput.py                       # mnist-tiny, colored-mnist, cifar10-ddpm
    python benchmarks/train_throughput.py --unet_config benchmarks/configs/unet-1.7m-32px.json
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from common import (
    build_trainer,
    machine,
    mfu_peak_gflops,
    peak_memory_mib,
    print_table,
    reset_peak_memory,
    train_flops_per_image,
    write_json,
)  # noqa: E402

CPU_BATCH = {"mnist-tiny": 64, "colored-mnist": 64, "cifar10-ddpm": 8}


def measure_one(preset: str, precision: str, options: argparse.Namespace) -> dict:
    """Runs inside a fresh process (Accelerate keeps one precision per process); `options` are this script's."""
    unet_config, batch, rounds, steps = options.unet_config, options.batch, options.rounds, options.steps
    ours_flags, baseline_workers = options.ours_flags, options.baseline_workers
    from official_style import OfficialStyleTrainer

    from ddpm_zoo.training import LossMeter

    device = "cuda" if torch.cuda.is_available() else "cpu"
    compile_start = time.perf_counter()
    trainer = build_trainer(preset, precision, batch, ours_flags, unet_config)
    config = trainer.config
    source = trainer_source(config)
    unet_dict = {k: v for k, v in trainer.unet.config.items() if not k.startswith("_")}
    baseline = OfficialStyleTrainer(
        trainer.accelerator,
        unet_dict,
        source.dataset,
        source.image_column,
        batch,
        config.random_flip,
        num_workers=baseline_workers,
    )
    meter = LossMeter(torch.zeros((), device=trainer.accelerator.device))
    ours = trainer.optimizer_steps(0, meter)

    def run_ours(n: int) -> None:
        for _ in range(n):
            next(ours)
        float(meter.running)

    def run_baseline(n: int) -> None:
        """The official example leaves cuDNN's heuristic algorithm choice on; ddpm-zoo times the candidates."""
        ours_benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False
        try:
            for _ in range(n):
                baseline.step()
        finally:
            torch.backends.cudnn.benchmark = ours_benchmark

    timings = {"ddpm-zoo": [], "official-style": []}
    peaks = {"ddpm-zoo": 0.0, "official-style": 0.0}
    run_ours(2)  # warm-up (and compilation, with --compile)
    setup_s = time.perf_counter() - compile_start
    run_baseline(2)
    for _ in range(rounds):
        for name, run in (("ddpm-zoo", run_ours), ("official-style", run_baseline)):
            reset_peak_memory(device)
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(steps)
            if device == "cuda":
                torch.cuda.synchronize()
            timings[name].append((time.perf_counter() - start) / steps)
            peaks[name] = max(peaks[name], peak_memory_mib(device))
    flops = train_flops_per_image(trainer.unet)
    peak = mfu_peak_gflops(device)
    rows = []
    for name in timings:
        step_s = statistics.median(timings[name])
        rows.append(
            {
                "preset": preset if not unet_config else Path(unet_config).stem,
                "precision": precision,
                "trainer": name + (f" {ours_flags}" if name == "ddpm-zoo" and ours_flags else ""),
                "baseline_workers": baseline_workers,
                "batch": batch,
                "s_per_step": round(step_s, 4),
                "img_per_s": round(batch / step_s, 1),
                "gflop_per_img": round(flops / 1e9, 3),
                "mfu_pct": round(100 * flops * batch / step_s / (peak * 1e9), 1),
                "peak_mem_mib": round(peaks[name]),
                "matmul_gflops": round(peak, 1),
                "params_m": round(sum(p.numel() for p in trainer.unet.parameters()) / 1e6, 3),
            }
        )
    rows[0]["speedup_vs_official"] = round(rows[1]["s_per_step"] / rows[0]["s_per_step"], 2)
    rows[0]["setup_s"] = round(setup_s, 1)
    return {"rows": rows}


def trainer_source(config):
    from ddpm_zoo import data

    return data.load_image_source(config.dataset_name, config.train_data_dir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="mnist-tiny,colored-mnist,cifar10-ddpm")
    parser.add_argument("--precisions", default="no,bf16")
    parser.add_argument("--unet_config", help="benchmark this UNet2DModel config.json instead of the presets")
    parser.add_argument("--batch", type=int, help="batch size (default: 64 on CPU, 8 for cifar10-ddpm; 128 on GPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="optimizer steps per timed block")
    parser.add_argument("--output", default="train_throughput-cpu.json")
    parser.add_argument("--ours_flags", default="", help='extra ddpm-zoo options, e.g. "--channels_last --compile"')
    parser.add_argument(
        "--baseline_workers",
        type=int,
        default=0,
        help="DataLoader workers for the official-style baseline (its --dataloader_num_workers; default 0 as there)",
    )
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        preset, precision = args._child.split(":")
        result = measure_one(preset, precision, args)
        print(json.dumps(result))
        return
    presets = ["mnist-tiny"] if args.unet_config else args.presets.split(",")
    rows, failed = [], []
    for preset in presets:
        for precision in args.precisions.split(","):
            batch = args.batch or (128 if torch.cuda.is_available() else CPU_BATCH.get(preset, 64))
            command = [sys.executable, __file__, "--_child", f"{preset}:{precision}", "--batch", str(batch)]
            command += ["--rounds", str(args.rounds), "--steps", str(args.steps), f"--ours_flags={args.ours_flags}"]
            command += ["--baseline_workers", str(args.baseline_workers)]
            if args.unet_config:
                command += ["--unet_config", args.unet_config]
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                print(result.stderr[-2000:], file=sys.stderr)
                failed.append(f"{preset}:{precision}")
                continue
            rows += json.loads(result.stdout.strip().splitlines()[-1])["rows"]
            print_table(rows[-2:], list(rows[-1]) + ["speedup_vs_official"])
    columns = ["preset", "precision", "trainer", "batch", "img_per_s", "speedup_vs_official", "gflop_per_img"]
    columns += ["mfu_pct", "peak_mem_mib", "matmul_gflops", "params_m", "setup_s"]
    print()
    print_table(rows, columns)
    path = write_json(args.output, {"machine": machine(), "rows": rows})
    print(f"\nwrote {path}")
    if failed:
        print(f"error: no measurement for {', '.join(failed)} (the child's traceback is above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

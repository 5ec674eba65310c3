"""Batches per second of the two data paths on the same dataset: decoded once into a uint8 tensor and
batched by index (in memory) vs decoded per sample by DataLoader workers (streaming).

    python benchmarks/data_paths.py [--workers 2] [--batch 64]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine, print_table, write_json  # noqa: E402

from ddpm_zoo import data  # noqa: E402


def batches_per_second(batches, epochs: int = 1) -> float:
    count, start = 0, time.perf_counter()
    for epoch in range(epochs):
        for images, _labels in batches.epoch(epoch):
            images.float()
            count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    source = data.load_image_source("mnist-5k")
    plan = data.EpochIndexPlan(len(source.dataset), args.batch, seed=0)
    start = time.perf_counter()
    decoded = data.decode_dataset(source, 28, 1, with_labels=True)
    decode_s = time.perf_counter() - start
    in_memory = data.InMemoryBatches(decoded, plan, "cpu")
    streaming = data.StreamingBatches(source, plan, 28, 1, False, num_classes=10, num_workers=args.workers)
    rows = [
        {
            "path": "in-memory",
            "batches_per_s": round(batches_per_second(in_memory, epochs=3), 1),
            "one_time_decode_s": round(decode_s, 2),
        },
        {
            "path": f"streaming ({args.workers} workers)",
            "batches_per_s": round(batches_per_second(streaming), 1),
            "one_time_decode_s": 0,
        },
    ]
    rows[0]["speedup"] = round(rows[0]["batches_per_s"] / rows[1]["batches_per_s"], 1)
    print_table(rows, ["path", "batches_per_s", "speedup", "one_time_decode_s"])
    path = write_json("data_paths-cpu.json", {"machine": machine(), "batch": args.batch, "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

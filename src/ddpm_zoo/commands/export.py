"""`ddpm-zoo export OUTPUT_DIR/checkpoint-N`: a training checkpoint as a publishable pipeline folder."""

import argparse
from pathlib import Path

from ddpm_zoo.export import export_checkpoint
from ddpm_zoo.loading import default_device


def export_command(args: argparse.Namespace) -> int:
    """Write the pipeline folder of one checkpoint and say where it is."""
    folder = export_checkpoint(args.checkpoint, args.output_dir, args.device or default_device())
    print(f"exported {args.checkpoint} to {folder}; publish it with `ddpm-zoo push {folder} REPO_ID`")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `export` on the `ddpm-zoo` command line."""
    parser = subparsers.add_parser(
        "export",
        help="write a publishable pipeline folder from a training checkpoint",
        description="Rebuild the pipeline a run publishes from one of its checkpoints (its EMA weights where it "
        "kept them) and write it with a model card, a sample grid and the loss curve so far, ready for "
        "`ddpm-zoo sample` and `ddpm-zoo push`.",
    )
    parser.add_argument("checkpoint", type=Path, help="a checkpoint folder, e.g. ddpm-mnist-tiny-output/checkpoint-500")
    parser.add_argument(
        "--output_dir",
        "--output-dir",
        type=Path,
        help="where to write it (default: <run folder>-checkpoint-N beside the run folder)",
    )
    parser.add_argument(
        "--device", default=None, help="torch device for the sample grid (default: cuda, then mps, then cpu)"
    )
    parser.set_defaults(func=export_command)

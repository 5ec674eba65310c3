"""`ddpm-zoo push FOLDER REPO_ID`: upload a saved pipeline folder to a Hub model repo."""

import argparse
from pathlib import Path

from ddpm_zoo.publish import push_pipeline_folder


def push_command(args: argparse.Namespace) -> int:
    """Upload a pipeline folder and print the commit."""
    commit = push_pipeline_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.folder} to {args.repo_id} ({args.revision or 'main'}): commit {commit}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `push` on the `ddpm-zoo` command line."""
    parser = subparsers.add_parser(
        "push",
        help="upload a saved pipeline folder to the Hugging Face Hub",
        description="Upload a pipeline folder (weights, pipeline.py, model card, samples) to a Hub model repo. "
        "Checkpoints, logs and optimizer state stay local.",
    )
    parser.add_argument("folder", type=Path, help="the pipeline folder (a training run's --output_dir)")
    parser.add_argument("repo_id", help="the Hub repo, e.g. your-name/mnist-ddpm (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="push to this branch (created from main when new)")
    parser.add_argument("--commit_message", "--commit-message", help="the commit's message")
    parser.add_argument(
        "--token",
        help="a Hub token with write access; default: HF_TOKEN or the `hf auth login` token "
        "(prefer those: a token on the command line shows in the process list)",
    )
    parser.set_defaults(func=push_command)

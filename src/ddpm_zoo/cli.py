"""`ddpm-zoo sample | push | evaluate | visualize`: one entry point over the package's commands."""

import argparse
import logging
import sys

from diffusers.utils import logging as diffusers_logging

from ddpm_zoo import evaluation, hub, sampling
from ddpm_zoo.errors import UserInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm-zoo", description="Sample, publish, evaluate and draw DDPMs.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    sampling.add_cli_parsers(subparsers)
    hub.add_cli_parser(subparsers)
    evaluation.add_cli_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpx2", "huggingface_hub", "diffusers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components"; our commands draw their own bars
    try:
        return args.func(args)
    except UserInputError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

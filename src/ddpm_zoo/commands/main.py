"""`ddpm-zoo train | sample | visualize | evaluate | push | export`: one entry point over the command modules."""

import argparse
import sys

from ddpm_zoo.commands import evaluate, export, push, run_command, sample, train, visualize

COMMANDS = (train, sample, visualize, evaluate, push, export)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm-zoo", description="Train, sample, publish, evaluate and draw DDPMs.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input is one line on stderr and exit status 2."""
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())

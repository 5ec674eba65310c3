"""`sample` and `visualize` for the `ddpm-zoo` entry point until it registers ddpm_zoo.commands directly."""

import argparse

from ddpm_zoo.commands import sample, visualize


def add_cli_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `sample` and `visualize` (see ddpm_zoo.commands.sample and ddpm_zoo.commands.visualize)."""
    sample.add_parser(subparsers)
    visualize.add_parser(subparsers)

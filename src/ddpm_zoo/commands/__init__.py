"""The command layer: one module per `ddpm-zoo` command; the only place that parses arguments.

This package module holds what every command shares: logging set-up, `--trust_remote_code`, and the one
error wrapper that turns the package's errors into one `error:` line and an exit status.
"""

import argparse
import logging
import sys
from collections.abc import Callable

from diffusers.utils import logging as diffusers_logging

from ddpm_zoo.errors import TrainingStopped, UserInputError
from ddpm_zoo.stopping import Interrupted, interrupts_as_errors

USER_INPUT_EXIT_CODE = 2
NOISY_LOGGERS = ("accelerate", "datasets", "diffusers", "httpx", "httpx2", "huggingface_hub")


def configure_logging() -> None:
    """Our progress messages at INFO; libraries' request logs and component bars only when they matter."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    diffusers_logging.disable_progress_bar()  # "Loading pipeline components"; our commands draw their own bars


def run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run `handler(args)`: bad input (`UserInputError`, `DataError`) is one line and exit status 2, a run
    that stopped early (`TrainingStopped`) one line and its own status, and so is SIGINT or SIGTERM
    (`Interrupted`, 128 + the signal number); `--debug` shows the traceback."""
    configure_logging()
    try:
        with interrupts_as_errors():
            return handler(args)
    except UserInputError as error:
        if getattr(args, "debug", False):
            raise
        print(f"error: {error}", file=sys.stderr)
        return USER_INPUT_EXIT_CODE
    except (TrainingStopped, Interrupted) as stopped:
        print(f"error: {stopped}", file=sys.stderr)
        return stopped.exit_code


def add_trust_remote_code_option(parser: argparse.ArgumentParser) -> None:
    """`--trust_remote_code` for the commands that load a pipeline (sample, visualize, evaluate)."""
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the custom pipeline code of a folder or repo that is not a ddpm-zoo pipeline (ddpm-zoo's own "
        "load into the installed classes and never need this)",
    )

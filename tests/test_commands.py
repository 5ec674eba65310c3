"""The one error wrapper of the command layer: each error is one `error:` line and its exit status."""

import argparse

import pytest

from ddpm_zoo.commands import run_command
from ddpm_zoo.commands.main import main
from ddpm_zoo.errors import DataError, TrainingStopped, UserInputError


def raising(error: Exception):
    def handler(args: argparse.Namespace) -> int:
        raise error

    return handler


@pytest.mark.parametrize(
    "error, status",
    [
        (UserInputError("bad option"), 2),
        (DataError("bad image"), 2),
        (TrainingStopped("loss became non-finite", exit_code=3), 3),
        (TrainingStopped("interrupted at step 5", exit_code=143), 143),
    ],
)
def test_errors_become_one_line_and_their_exit_status(error, status, capsys):
    assert run_command(raising(error), argparse.Namespace(debug=False)) == status
    assert capsys.readouterr().err.splitlines() == [f"error: {error}"]


def test_debug_shows_the_traceback_of_bad_input():
    with pytest.raises(UserInputError, match="bad option"):
        run_command(raising(UserInputError("bad option")), argparse.Namespace(debug=True))


@pytest.mark.parametrize("argv", [["--debug", "train"], ["train", "--debug"]])
def test_ddpm_zoo_debug_is_taken_before_or_after_the_command(argv):
    with pytest.raises(UserInputError, match="--snr_gamma must be a finite positive number, got 0.0"):
        main([*argv, "--snr_gamma", "0", "--print_config"])


def test_without_debug_the_same_input_is_one_line(capsys):
    assert main(["train", "--snr_gamma", "0", "--print_config"]) == 2
    assert capsys.readouterr().err.splitlines() == ["error: --snr_gamma must be a finite positive number, got 0.0"]

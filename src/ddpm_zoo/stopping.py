"""SIGINT and SIGTERM: inside the training loop a flag that every process agrees on after each optimizer step,
so all of them checkpoint the same step and exit; anywhere else an `Interrupted` error, so a command ends
with one line and 128 + the signal number, having run the clean-up of whatever it was writing.
"""

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

import torch
import torch.distributed as dist

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal outside the training loop. Like KeyboardInterrupt it is no `Exception`, so no handler of
    bad data or failed writes mistakes it for one; `exit_code` is 128 + the signal number."""

    def __init__(self, number: int, message: str | None = None):
        super().__init__(message or f"interrupted by {signal.Signals(number).name}")
        self.number = number
        self.exit_code = 128 + number


def raise_interrupted(number: int, frame: FrameType | None) -> None:
    raise Interrupted(number)


@contextlib.contextmanager
def interrupts_as_errors() -> Iterator[None]:
    """SIGINT and SIGTERM raise `Interrupted` wherever the program stands; the previous handlers come back
    afterwards."""
    previous = {number: signal.signal(number, raise_interrupted) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


class StopRequest:
    """Turns SIGINT/SIGTERM into a flag the loop checks after every optimizer step.

    One process reads its own flag. Several agree through an all-reduce (max) of one integer over a CPU
    (gloo) group: no device sync, and every process learns of a signal that reached any of them at the
    same step. A signal that arrives after the last step's check is raised as `Interrupted` on leaving.
    """

    def __init__(self, num_processes: int = 1) -> None:
        self.signal_number = 0
        self.num_processes = num_processes
        self.previous: dict[int, object] = {}
        self.group = None

    def __enter__(self) -> "StopRequest":
        if self.num_processes > 1 and dist.get_backend() != "gloo":  # a collective: every process creates it
            self.group = dist.new_group(backend="gloo")
        for number in STOP_SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        self.signal_number = number

    def agreed(self) -> int:
        """The signal to stop on, the same in every process (0: go on)."""
        if self.num_processes == 1:
            return self.signal_number
        flag = torch.tensor([self.signal_number], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return int(flag.item())

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        number = self.agreed() if kind is None else 0
        if number:
            raise Interrupted(number)

"""Snapshot pushes during training (`--hub_strategy`): each checkpoint's publishable pipeline goes to the Hub
repo in a background thread, so training never waits for the Hub; optimizer state is never uploaded."""

import logging
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from ddpm_zoo.checkpoints import LOSS_LOG, RUN_RECORD
from ddpm_zoo.export import export_checkpoint
from ddpm_zoo.hub import PICKLE_SUFFIXES, first_line
from ddpm_zoo.publish import push_pipeline_folder

logger = logging.getLogger(__name__)


def snapshot_revision(strategy: str, step: int) -> str | None:
    """Where a snapshot goes: `every_save` updates the main branch, `checkpoint` its own branch `step-N`."""
    return f"step-{step}" if strategy == "checkpoint" else None


def copy_checkpoint(checkpoint: Path, root: Path) -> Path:
    """A copy of the checkpoint's weights and state (no optimizer or other pickles) beside the run's record
    and loss log, so training may prune or overwrite the original while the snapshot is made."""
    run = root / "run"
    run.mkdir()
    for name in (RUN_RECORD, LOSS_LOG):
        if (checkpoint.parent / name).is_file():
            shutil.copyfile(checkpoint.parent / name, run / name)
    ignore = shutil.ignore_patterns("*optimizer*", "*random_states*", *(f"*{s}" for s in PICKLE_SUFFIXES))
    return Path(shutil.copytree(checkpoint, run / checkpoint.name, ignore=ignore))


class SnapshotPusher:
    """Pushes checkpoints' pipelines one at a time in a background thread; `finish` waits for them."""

    def __init__(self, strategy: str, repo_id: str, private: bool, token: str | None):
        self.strategy, self.repo_id, self.private, self.token = strategy, repo_id, private, token
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-snapshot")
        self.pending: dict[int, Future] = {}

    def submit(self, checkpoint: Path, step: int) -> None:
        """Copy the checkpoint now and push its pipeline in the background."""
        root = Path(tempfile.mkdtemp(prefix="ddpm-zoo-snapshot-"))
        copy = copy_checkpoint(checkpoint, root)
        self.pending[step] = self.executor.submit(self.push, copy, root, step)

    def push(self, checkpoint: Path, root: Path, step: int) -> str:
        """Export the copied checkpoint and push it; the temporary folder goes either way."""
        try:
            folder = export_checkpoint(checkpoint, root / "pipeline")
            revision = snapshot_revision(self.strategy, step)
            message = f"Snapshot at step {step} with ddpm-zoo"
            return push_pipeline_folder(folder, self.repo_id, self.private, self.token, revision, message)
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def finish(self) -> None:
        """Wait for the pushes still under way; a failed one is a warning line, not an error."""
        for step, future in sorted(self.pending.items()):
            error = future.exception()
            if error is not None:
                reason = first_line(error)
                logger.warning("the snapshot at step %d was not pushed to %s: %s", step, self.repo_id, reason)
        self.executor.shutdown()
        self.pending.clear()

"""Where commands write: output paths checked before any work (so no sampling is lost to a bad path), seeds
in range, and a failed write as one error line."""

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

from ddpm_zoo.errors import UserInputError

MAX_SEED = 2**63 - 1  # image i is seeded seed + i, and torch.Generator takes seeds below 2**64


def check_seed(seed: int) -> None:
    """--seed must be between 0 and MAX_SEED."""
    if not 0 <= seed <= MAX_SEED:
        raise UserInputError(f"--seed must be between 0 and {MAX_SEED}, got {seed}")


def check_output_folder(folder: Path) -> None:
    """Refuse a folder that cannot be made or written to: a file on its path, or a file system that refuses
    new files (read-only, /proc)."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserInputError(f"cannot write into {folder}: {existing} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".ddpm-zoo-write-test-"):
            pass
    except OSError as error:
        raise UserInputError(
            f"cannot write to {folder}: creating files in {existing} fails ({error.strerror})"
        ) from None


def check_output_file(path: Path) -> None:
    """Refuse an output file that is an existing folder or whose folder cannot be written (see above)."""
    if path.is_dir():
        raise UserInputError(f"{path} is a folder; give a file name")
    check_output_folder(path.parent)


def check_image_suffix(path: Path) -> None:
    """Refuse a file name whose suffix names no image format Pillow can write."""
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format not in Image.SAVE:
        raise UserInputError(f"{path.name} has no image suffix that Pillow can write (.png, .jpg, .webp, ...)")


@contextmanager
def writing(path: Path) -> Iterator[None]:
    """Report a failed write of `path` as one error line."""
    try:
        yield
    except OSError as error:
        raise UserInputError(f"cannot write {path}: {error.strerror or error}") from None

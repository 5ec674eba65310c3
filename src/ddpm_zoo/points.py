"""2-D point data for the toy: four seeded generators and readers for tables of points.

The swiss roll is the data of Sohl-Dickstein et al. (2015, Sec. 3.1 and Fig. 1), where diffusion models began;
two moons, eight Gaussians (with the mode of each point as its label) and the checkerboard are the usual other
toy sets. Every generator is a pure function of (count, seed) and scales its points to about unit spread, so one
noise schedule serves them all.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from ddpm_zoo.errors import DataError

NUM_TOY_POINTS = 10_000
EIGHT_GAUSSIANS_RADIUS = 2.0
EIGHT_GAUSSIANS_STD = 0.1
MODE_NAMES = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
COORDINATE_GUESSES = (("x", "y"), ("x0", "x1"), ("x1", "x2"))
LABEL_GUESSES = ("label", "labels", "class", "mode", "target")


@dataclass
class PointSet:
    """Float32 points (N, 2), int64 labels (N,) or None, and the names of the labels' classes."""

    points: torch.Tensor
    labels: torch.Tensor | None = None
    class_names: tuple[str, ...] = ()


def swiss_roll(count: int, seed: int) -> PointSet:
    """The swiss roll of Sohl-Dickstein et al. (2015): angle t ~ U(1.5 pi, 4.5 pi), (t cos t, t sin t) with
    Gaussian noise of 0.5 (scikit-learn's make_swiss_roll in the plane), divided by 5."""
    rng = np.random.default_rng(seed)
    t = 1.5 * math.pi * (1 + 2 * rng.random(count))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) + 0.5 * rng.standard_normal((count, 2))
    return PointSet(torch.from_numpy(points / 5).float())


def two_moons(count: int, seed: int) -> PointSet:
    """Two interleaved half circles with Gaussian noise of 0.05, centred; the moon of each point is its label."""
    rng = np.random.default_rng(seed)
    moon = rng.integers(0, 2, count)
    angle = math.pi * rng.random(count)
    x = np.where(moon == 0, np.cos(angle), 1 - np.cos(angle)) - 0.5
    y = np.where(moon == 0, np.sin(angle), 0.5 - np.sin(angle)) - 0.25
    points = np.stack([x, y], axis=1) + 0.05 * rng.standard_normal((count, 2))
    return PointSet(torch.from_numpy(2 * points).float(), torch.from_numpy(moon).long(), ("upper", "lower"))


def eight_gaussians(count: int, seed: int) -> PointSet:
    """Eight Gaussians of std `EIGHT_GAUSSIANS_STD` on a circle of radius `EIGHT_GAUSSIANS_RADIUS`; the label
    is the mode, counted anticlockwise from the east."""
    rng = np.random.default_rng(seed)
    mode = rng.integers(0, 8, count)
    points = mode_centres()[mode] + EIGHT_GAUSSIANS_STD * rng.standard_normal((count, 2))
    return PointSet(torch.from_numpy(points).float(), torch.from_numpy(mode).long(), MODE_NAMES)


def mode_centres() -> np.ndarray:
    """The eight centres of `eight_gaussians`, (8, 2)."""
    angles = 2 * math.pi * np.arange(8) / 8
    return EIGHT_GAUSSIANS_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def checkerboard(count: int, seed: int) -> PointSet:
    """Uniform on the dark squares of a 4 x 4 board over [-2, 2]^2."""
    rng = np.random.default_rng(seed)
    x = 4 * rng.random(count) - 2
    y = rng.random(count) - 2 * rng.integers(0, 2, count) + np.floor(x) % 2
    return PointSet(torch.from_numpy(np.stack([x, y], axis=1)).float())


GENERATORS: dict[str, Callable[[int, int], PointSet]] = {
    "swiss-roll": swiss_roll,
    "two-moons": two_moons,
    "eight-gaussians": eight_gaussians,
    "checkerboard": checkerboard,
}


def generate(name: str, count: int = NUM_TOY_POINTS, seed: int = 0) -> PointSet:
    """`count` points of the generated set `name`, the same for the same seed."""
    if name not in GENERATORS:
        raise DataError(f"unknown 2-D data set {name!r}; choose one of: {', '.join(GENERATORS)}")
    return GENERATORS[name](count, seed)


def read_table(path: str, cache_dir: str | None = None) -> datasets.Dataset:
    """A CSV or parquet file (or a folder of them), or a dataset saved with `save_to_disk`."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"--train_data_dir {path} does not exist")
    if (root / "dataset_info.json").exists() or (root / "state.json").exists():
        loaded = datasets.load_from_disk(str(root))
        return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for kind, suffix in (("csv", ".csv"), ("parquet", ".parquet")):
        chosen = [str(p) for p in files if p.suffix.lower() == suffix]
        if chosen:
            try:
                return datasets.load_dataset(kind, data_files=chosen, split="train", cache_dir=cache_dir)
            except (ValueError, datasets.exceptions.DatasetGenerationError) as error:
                raise DataError(f"cannot read the points in --train_data_dir {path}: {error}") from None
    raise DataError(f"--train_data_dir {path} holds no CSV or parquet files of points")


def table_points(table: datasets.Dataset, label_column: str | None = None) -> PointSet:
    """The two coordinate columns of a table (x and y, or else its first two numeric columns) and its labels
    (`label_column`, or a column named like a label; a ClassLabel's names become the class names)."""
    columns = table.column_names
    pair = next((p for p in COORDINATE_GUESSES if set(p) <= set(columns)), None)
    if pair is None:
        features = table.features.items()
        numeric = [name for name, feature in features if _is_number(feature) and name not in LABEL_GUESSES]
        if len(numeric) < 2:
            raise DataError(f"a table of points needs two numeric columns (x and y); columns: {', '.join(columns)}")
        pair = tuple(numeric[:2])
    points = torch.tensor(np.stack([np.asarray(table[c], dtype=np.float64) for c in pair], axis=1)).float()
    if not bool(points.isfinite().all()):
        raise DataError(f"the columns {', '.join(pair)} hold values that are not finite numbers")
    if label_column is not None and label_column not in columns:
        raise DataError(f"label column {label_column!r} not found; columns: {', '.join(columns)}")
    label_column = label_column or next((name for name in LABEL_GUESSES if name in columns), None)
    if label_column is None:
        return PointSet(points)
    feature = table.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return PointSet(points, torch.tensor(table[label_column]).long(), tuple(feature.names))
    try:
        labels = torch.tensor([int(value) for value in table[label_column]]).long()
    except (TypeError, ValueError):
        raise DataError(f"label column {label_column!r} must hold integer class indices") from None
    names = tuple(str(i) for i in range(int(labels.max()) + 1)) if len(labels) else ()
    return PointSet(points, labels, names)


def _is_number(feature: object) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint", "float", "double"))

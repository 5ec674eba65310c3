"""The real images a model is compared with, their cached digit-feature statistics, and the context a
sweep shares between its rows (reference, statistics, optional feature extractors)."""

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm_zoo.data import (
    EMBEDDED_MNIST,
    MNIST_5K_CONTENT_SHA256,
    color_indices,
    colorize,
    decode_dataset,
    load_image_source,
    load_mnist_5k_arrays,
)
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation.classifier import DIGIT_SIZE, NUM_DIGITS, classifier_metadata, classify
from ddpm_zoo.evaluation.fidelity import InceptionMetrics, dinov2_features, inception_unavailable, load_dinov2
from ddpm_zoo.evaluation.metrics import feature_statistics
from ddpm_zoo.hub import first_line
from ddpm_zoo.introspection import is_conditional, num_classes
from ddpm_zoo.presets import DIGIT_NAMES

logger = logging.getLogger(__name__)


@dataclass
class Reference:
    """The real images a model is compared with (uint8 NCHW), named for the JSON and the model card;
    `key` identifies their digit-classifier features (the cache key of their statistics); `split` is the
    dataset split they come from (None for a local folder)."""

    name: str
    dataset_type: str
    dataset_name: str
    images: torch.Tensor
    key: str
    split: str | None = None


def digit_reference(channels: int = 1) -> Reference:
    """The 5,000 embedded digits; for RGB models tinted by the colorizer with seed 0 (the digit features
    are the same either way: max over channels recovers the gray digit exactly)."""
    arrays, _ = load_mnist_5k_arrays()
    images = torch.from_numpy(arrays).unsqueeze(1)
    if channels == 1:
        return Reference(EMBEDDED_MNIST, "ylecun/mnist", "MNIST (mnist-5k)", images, MNIST_5K_CONTENT_SHA256, "train")
    colored = colorize(images, torch.from_numpy(color_indices(len(images), seed=0)))
    name = "colored MNIST (mnist-5k, colorized)"
    return Reference(EMBEDDED_MNIST, "ylecun/mnist", name, colored, MNIST_5K_CONTENT_SHA256, "train")


def dataset_reference(name: str, resolution: int, channels: int) -> Reference:
    """Real images from a Hub dataset id or a local folder (through ddpm_zoo.data), at the model's size.

    A local folder is named by its last path component only: the name reaches the public model card."""
    path = Path(name).expanduser()
    local = path.exists()
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UserInputError(f"no such reference folder: {name}")
    source = load_image_source(None if local else name, train_data_dir=str(path) if local else None)
    decoded = decode_dataset(source, resolution, channels, convert_channels=True, skip_bad_images=True)
    digest = hashlib.sha256(decoded.images.numpy().tobytes()).hexdigest()
    shown = path.resolve().name if local else name
    return Reference(
        shown, "local-folder" if local else name, shown, decoded.images, digest, None if local else "train"
    )


def cache_dir() -> Path:
    """Where real-feature statistics are cached: $DDPM_ZOO_CACHE, else $XDG_CACHE_HOME/ddpm-zoo/eval."""
    if os.environ.get("DDPM_ZOO_CACHE"):
        return Path(os.environ["DDPM_ZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddpm-zoo" / "eval"


def reference_digit_statistics(reference: Reference) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the classifier features of the reference images, cached on disk under a
    key made of the reference's content hash and the classifier's sha256; a corrupt entry is replaced."""
    key = hashlib.sha256(f"{reference.key}:{classifier_metadata()['sha256']}".encode()).hexdigest()[:24]
    path = cache_dir() / f"digit-features-{key}.safetensors"
    cached = read_cached_statistics(path)
    if cached is not None:
        return cached
    _, features = classify(reference.images)
    mu, sigma = feature_statistics(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp-{os.getpid()}")
    save_file({"mu": mu, "sigma": sigma}, str(partial), metadata={"count": str(len(features))})
    os.replace(partial, path)
    return mu, sigma


def read_cached_statistics(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The mean and covariance cached at `path`; None when there are none, or when the entry is corrupt
    (not safetensors, truncated, other tensors or shapes, not finite), so that it is computed again."""
    if not path.exists():
        return None
    try:
        stats = load_file(str(path))
        mu, sigma = stats["mu"], stats["sigma"]
    except (SafetensorError, OSError, KeyError) as error:
        logger.warning("recomputing the corrupt cache entry %s (%s)", path, first_line(error))
        return None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not (mu.isfinite().all() and sigma.isfinite().all()):
        logger.warning(
            "recomputing the corrupt cache entry %s (mu %s, sigma %s)", path, list(mu.shape), list(sigma.shape)
        )
        return None
    return mu, sigma


@dataclass
class EvaluationContext:
    """What a sweep shares between its rows: the reference, its statistics and the optional extractors."""

    reference: Reference
    digits: bool
    device: torch.device | str = "cpu"
    extra_metrics: bool = True
    skipped: dict[str, str] = field(default_factory=dict)
    _digit_stats: tuple[torch.Tensor, torch.Tensor] | None = None
    _inception: InceptionMetrics | None = None
    _dinov2: tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None = None
    _tried: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        """Refuse a reference of fewer than 2 images (no covariance: the Frechet distance would be NaN)."""
        count = len(self.reference.images)
        if count < 2:
            raise UserInputError(
                f"the reference {self.reference.name} has {count} image(s); a Frechet distance needs at least 2"
            )

    def digit_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._digit_stats is None:
            self._digit_stats = reference_digit_statistics(self.reference)
        return self._digit_stats

    def inception(self) -> InceptionMetrics | None:
        if self.extra_metrics and "inception" not in self._tried:
            self._tried.add("inception")
            reason = inception_unavailable()
            if reason is None:
                self._inception = InceptionMetrics(self.reference.images, self.device)
            else:
                self._skip("fid_kid", reason)
        return self._inception

    def dinov2(self) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]] | None:
        if self.extra_metrics and "dinov2" not in self._tried:
            self._tried.add("dinov2")
            model, reason = load_dinov2(self.device)
            if model is None:
                self._skip("fd_dinov2", reason)
            else:
                stats = feature_statistics(dinov2_features(model, self.reference.images, self.device))
                self._dinov2 = (model, stats)
        return self._dinov2

    def require_extra_metric(self) -> None:
        """Load FID/KID and FD-DINOv2 now, and refuse when neither can run (a non-digit model has no other
        metric, so sampling would measure nothing)."""
        if self.inception() is None and self.dinov2() is None:
            raise UserInputError(
                "no metric can score this non-digit model here: it needs FID/KID (torchmetrics[image] with "
                "torch-fidelity's Inception weights) or FD-DINOv2 (transformers and a local DINOv2 checkpoint)"
            )

    def _skip(self, metric: str, reason: str) -> None:
        self.skipped[metric] = reason
        print(reason, flush=True)


def is_digit_model(pipeline: DiffusionPipeline) -> bool:
    """A 1- or 3-channel model of 28 px digits, or one whose class names are the ten digits."""
    config = pipeline.unet.config
    if config.in_channels not in (1, 3):
        return False
    if is_conditional(pipeline) and num_classes(pipeline) != NUM_DIGITS:
        return False
    names = tuple((pipeline.config.get("class_names") or "").split(","))
    size = config.sample_size
    height_width = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return names == DIGIT_NAMES or height_width == (DIGIT_SIZE, DIGIT_SIZE)


def make_context(
    pipeline: DiffusionPipeline,
    digits: bool | None = None,
    reference: Reference | str | None = None,
    extra: bool = True,
) -> EvaluationContext:
    """Decide how to evaluate `pipeline`: digit metrics or not, and against which real images."""
    digits = is_digit_model(pipeline) if digits is None else digits
    if not digits and not extra:
        raise UserInputError("a non-digit model is scored by FID/KID and FD-DINOv2 only: drop --no_extra_metrics")
    channels = int(pipeline.unet.config.in_channels)
    if reference == EMBEDDED_MNIST:
        reference = digit_reference(channels)
    elif isinstance(reference, str):
        size = pipeline.unet.config.sample_size
        reference = dataset_reference(reference, size if isinstance(size, int) else size[0], channels)
    elif not isinstance(reference, Reference):
        if not digits:
            raise UserInputError("name the real images to compare this (non-digit) model with: --reference DATASET")
        reference = digit_reference(channels)
    context = EvaluationContext(reference, digits, device=pipeline.device, extra_metrics=extra)
    if not digits:
        context.require_extra_metric()
    return context

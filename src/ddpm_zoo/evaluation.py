"""Evaluation: how good is a model, measured offline under one published protocol (docs/evaluation.md).

Digit models (mnist-tiny, colored-mnist) are scored with a small digit classifier that ships with the
package (``data_files/digit_classifier.safetensors``, trained by ``scripts/train_digit_classifier.py``):

- recognisability: share of samples the classifier labels with confidence >= 0.9;
- conditional accuracy: share of class-conditional samples classified as the requested digit;
- FD (digit features): Frechet distance (Heusel et al., 2017) between classifier features of generated
  and real digits, with the real statistics cached;
- color accuracy (RGB digits): the color read from the foreground pixels is the requested one or, for
  models that do not take a color, a clean palette color.

FID/KID (torchmetrics with torch-fidelity's Inception weights) and FD-DINOv2 (Stein et al., 2023) run
when their packages and weights are present locally, and are skipped with a one-line message otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm_zoo.data import COLOR_NAMES, COLOR_PALETTE, EMBEDDED_MNIST, MNIST_5K_CONTENT_SHA256
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.introspection import call_parameters, default_guidance_scale, is_conditional, num_classes, takes_guidance
from ddpm_zoo.presets import DIGIT_NAMES

DIGIT_SIZE = 28
NUM_DIGITS = 10
CONFIDENCE_THRESHOLD = 0.9
FOREGROUND_THRESHOLD = 0.5
COLOR_AGREEMENT = 0.9
COLOR_TOLERANCE = 0.25
CLASSIFIER_FILE = "data_files/digit_classifier.safetensors"
CLASSIFIER_METADATA_FILE = "data_files/digit_classifier.json"
TEST_PER_CLASS = 50
RESULTS_FILE = "eval_results.json"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
KID_SUBSET_SEED = 0
DINOV2_CHECKPOINT = "facebook/dinov2-large"
TASK_TYPE = "unconditional-image-generation"


# --------------------------------------------------------------------------- the digit classifier


class DigitClassifier(nn.Module):
    """A small CNN for 28x28 grayscale digits in [0, 1]: three conv stages (28 -> 14 -> 7) with GroupNorm
    (per-image, so training and inference behave alike), global average pooling, a 128-d feature layer
    (used for Frechet distance) and a 10-way linear head."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), feature_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for stage, width in enumerate(widths):
            for _ in range(2):
                layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.GroupNorm(4, width)]
                layers.append(nn.ReLU(inplace=True))
                in_channels = width
            if stage < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.feature = nn.Sequential(nn.Linear(in_channels, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, NUM_DIGITS)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate 128-d features of (N, 1, 28, 28) images in [0, 1]."""
        normalised = (images - 0.1307) / 0.3081
        return self.feature(self.body(normalised).mean(dim=(2, 3)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, 10)."""
        return self.head(self.dropout(self.features(images)))


def classifier_path() -> Path:
    """Where the shipped classifier weights live."""
    return Path(str(resources.files("ddpm_zoo").joinpath(CLASSIFIER_FILE)))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@lru_cache(maxsize=1)
def classifier_metadata() -> dict[str, Any]:
    """The shipped classifier's metadata: architecture, seed, split, test accuracy, sha256."""
    text = resources.files("ddpm_zoo").joinpath(CLASSIFIER_METADATA_FILE).read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def load_digit_classifier() -> DigitClassifier:
    """The shipped digit classifier in eval mode, its file checked against the metadata's sha256."""
    path = classifier_path()
    digest = file_sha256(path)
    if digest != classifier_metadata()["sha256"]:
        raise UserInputError(f"{path} does not match its metadata (sha256 {digest}); reinstall ddpm-zoo")
    model = DigitClassifier(**classifier_metadata()["architecture"])
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)


def save_digit_classifier(model: DigitClassifier, path: str | os.PathLike) -> str:
    """Write the classifier's weights as safetensors (fp32); returns the file's sha256."""
    state = {name: tensor.detach().contiguous().clone() for name, tensor in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt"})
    return file_sha256(path)


def classifier_split(labels: torch.Tensor, test_per_class: int = TEST_PER_CLASS) -> tuple[torch.Tensor, ...]:
    """The fixed split of the embedded digits: the last `test_per_class` digits of each class (in file
    order) are held out for testing; returns (train_indices, test_indices)."""
    test = [torch.nonzero(labels == digit).flatten()[-test_per_class:] for digit in range(NUM_DIGITS)]
    test_indices = torch.cat(test).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[test_indices] = False
    return torch.nonzero(mask).flatten(), test_indices


# --------------------------------------------------------------------------- metric functions


def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W), uint8 or float in [0, 1], 1 or 3 channels -> float (N, 1, 28, 28) in [0, 1].

    RGB digits become grayscale by the per-pixel max over channels (colored digits are gray * color);
    other sizes are resized with antialiased bilinear interpolation.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise UserInputError(f"expected digit images (N, 1 or 3, H, W), got shape {tuple(images.shape)}")
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    gray = images.amax(dim=1, keepdim=True)
    if gray.shape[-2:] != (DIGIT_SIZE, DIGIT_SIZE):
        gray = F.interpolate(gray, size=(DIGIT_SIZE, DIGIT_SIZE), mode="bilinear", antialias=True)
    return gray.clamp(0, 1)


@torch.no_grad()
def classify(
    images: torch.Tensor, classifier: DigitClassifier | None = None, batch_size: int = 500
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities (N, 10) and float64 penultimate features (N, 128) of digit images."""
    classifier = classifier if classifier is not None else load_digit_classifier()
    probabilities, features = [], []
    for start in range(0, len(images), batch_size):
        batch = to_classifier_input(images[start : start + batch_size].cpu())
        feature = classifier.features(batch)
        probabilities.append(classifier.head(feature).softmax(dim=1))
        features.append(feature.double())
    return torch.cat(probabilities), torch.cat(features)


def recognisability(probabilities: torch.Tensor, threshold: float = CONFIDENCE_THRESHOLD) -> float:
    """Share of samples whose most likely digit has probability >= `threshold`."""
    return (probabilities.max(dim=1).values >= threshold).double().mean().item()


def conditional_accuracy(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples classified as their requested (or true) digit."""
    return (probabilities.argmax(dim=1) == labels.to(probabilities.device)).double().mean().item()


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (unbiased) covariance of features (N, D), in float64."""
    features = features.double()
    return features.mean(dim=0), torch.cov(features.T).reshape(features.shape[1], features.shape[1])


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix via eigh (negative eigenvalues -> 0)."""
    values, vectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (Heusel et al., 2017):
    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).

    tr((S1 S2)^1/2) is computed as tr((S1^1/2 S2 S1^1/2)^1/2): the same eigenvalues, but a symmetric
    matrix, so `eigh` gives a stable answer without scipy.
    """
    mu1, mu2, sigma1, sigma2 = (t.double() for t in (mu1, mu2, sigma1, sigma2))
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return max(distance.item(), 0.0)


def frechet_distance_features(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Frechet distance between two feature sets (N1, D) and (N2, D)."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def _palette() -> torch.Tensor:
    return torch.tensor(list(COLOR_PALETTE.values()), dtype=torch.float32) / 255.0


def read_colors(
    images: torch.Tensor, threshold: float = FOREGROUND_THRESHOLD
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read the color of RGB digits (N, 3, H, W) from their foreground pixels (max channel > threshold).

    Each foreground pixel's chromaticity (rgb / max channel) votes for its nearest palette color; the
    image's color is the majority (COLOR_NAMES index, -1 with no foreground). Also returns the share of
    foreground pixels that agree with it and the distance of the mean chromaticity from that color.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise UserInputError(f"reading colors needs RGB images (N, 3, H, W), got {tuple(images.shape)}")
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    value = images.amax(dim=1)
    foreground = value > threshold
    chroma = images / value.clamp(min=1e-6).unsqueeze(1)
    palette = _palette()
    pixels = chroma.permute(0, 2, 3, 1)
    votes = torch.cdist(pixels.reshape(-1, 3), palette).argmin(dim=1).reshape(value.shape)
    counts = torch.stack([((votes == c) & foreground).sum(dim=(1, 2)) for c in range(len(palette))], dim=1)
    total = foreground.sum(dim=(1, 2))
    colors = torch.where(total > 0, counts.argmax(dim=1), -1)
    agreement = counts.max(dim=1).values / total.clamp(min=1)
    mean_chroma = (pixels * foreground.unsqueeze(-1)).sum(dim=(1, 2)) / total.clamp(min=1).unsqueeze(1)
    distance = (mean_chroma - palette[colors.clamp(min=0)]).norm(dim=1)
    distance = torch.where(total > 0, distance, torch.full_like(distance, math.inf))
    return colors, agreement, distance


def color_accuracy(images: torch.Tensor, colors: torch.Tensor | None = None) -> float:
    """Share of RGB digits whose foreground reads as `colors` (COLOR_NAMES indices); with `colors=None`,
    share whose foreground is one clean palette color (>= 90 % of pixels agree, mean within 0.25)."""
    read, agreement, distance = read_colors(images)
    clean = (agreement >= COLOR_AGREEMENT) & (distance <= COLOR_TOLERANCE)
    if colors is None:
        return clean.double().mean().item()
    return (read == colors.to(read.device)).double().mean().item()


def color_counts(images: torch.Tensor) -> dict[str, int]:
    """How many RGB digits read as each palette color (and "none" without foreground)."""
    read, _, _ = read_colors(images)
    counts = {name: int((read == index).sum()) for index, name in enumerate(COLOR_NAMES)}
    counts["none"] = int((read < 0).sum())
    return counts


# --------------------------------------------------------------------------- reference data and caches


@dataclass
class Reference:
    """The real images a model is compared with (uint8 NCHW), named for the JSON and the model card;
    `key` identifies their digit-classifier features (the cache key of their statistics)."""

    name: str
    dataset_type: str
    dataset_name: str
    images: torch.Tensor
    key: str


def digit_reference(channels: int = 1) -> Reference:
    """The 5,000 embedded digits; for RGB models tinted by the colorizer with seed 0 (the digit features
    are the same either way: max over channels recovers the gray digit exactly)."""
    from ddpm_zoo.data import color_indices, colorize, load_mnist_5k_arrays

    arrays, _ = load_mnist_5k_arrays()
    images = torch.from_numpy(arrays).unsqueeze(1)
    if channels == 1:
        return Reference(EMBEDDED_MNIST, "ylecun/mnist", "MNIST (mnist-5k)", images, MNIST_5K_CONTENT_SHA256)
    colored = colorize(images, torch.from_numpy(color_indices(len(images), seed=0)))
    name = "colored MNIST (mnist-5k, colorized)"
    return Reference(EMBEDDED_MNIST, "ylecun/mnist", name, colored, MNIST_5K_CONTENT_SHA256)


def dataset_reference(name: str, resolution: int, channels: int) -> Reference:
    """Real images from a Hub dataset id or a local folder (through ddpm_zoo.data), at the model's size.

    A local folder is named by its last path component only: the name reaches the public model card."""
    from ddpm_zoo.data import decode_dataset, load_image_source

    path = Path(name).expanduser()
    local = path.exists()
    if not local and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise UserInputError(f"no such reference folder: {name}")
    source = load_image_source(None if local else name, train_data_dir=str(path) if local else None)
    decoded = decode_dataset(source, resolution, channels, convert_channels=True, skip_bad_images=True)
    digest = hashlib.sha256(decoded.images.numpy().tobytes()).hexdigest()
    shown = path.resolve().name if local else name
    return Reference(shown, "local-folder" if local else name, shown, decoded.images, digest)


def cache_dir() -> Path:
    """Where real-feature statistics are cached: $DDPM_ZOO_CACHE, else $XDG_CACHE_HOME/ddpm-zoo/eval."""
    if os.environ.get("DDPM_ZOO_CACHE"):
        return Path(os.environ["DDPM_ZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ddpm-zoo" / "eval"


def reference_digit_statistics(reference: Reference) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance of the classifier features of the reference images, cached on disk under a
    key made of the reference's content hash and the classifier's sha256."""
    key = hashlib.sha256(f"{reference.key}:{classifier_metadata()['sha256']}".encode()).hexdigest()[:24]
    path = cache_dir() / f"digit-features-{key}.safetensors"
    if path.exists():
        stats = load_file(str(path))
        return stats["mu"], stats["sigma"]
    _, features = classify(reference.images)
    mu, sigma = feature_statistics(features)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".tmp-{os.getpid()}")
    save_file({"mu": mu, "sigma": sigma}, str(partial), metadata={"count": str(len(features))})
    os.replace(partial, path)
    return mu, sigma


# --------------------------------------------------------------------------- optional metrics


def inception_weights_path() -> Path:
    """Where torch-fidelity keeps its Inception weights (or $DDPM_ZOO_INCEPTION_WEIGHTS)."""
    if os.environ.get("DDPM_ZOO_INCEPTION_WEIGHTS"):
        return Path(os.environ["DDPM_ZOO_INCEPTION_WEIGHTS"])
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_unavailable() -> str | None:
    """Why FID/KID cannot run here (one line), or None when torchmetrics and the weights are present."""
    try:
        import torch_fidelity  # noqa: F401
        import torchmetrics.image.fid  # noqa: F401
    except ImportError as error:
        return f"FID/KID skipped: torchmetrics[image] (torch-fidelity) cannot be imported here ({error})"
    path = inception_weights_path()
    if not path.is_file():
        return (
            f"FID/KID skipped: torch-fidelity's Inception weights are not at {path} "
            "(offline; copy them there or set DDPM_ZOO_INCEPTION_WEIGHTS)"
        )
    return None


class InceptionMetrics:
    """FID and KID from torchmetrics against one reference set; the real features are computed once."""

    def __init__(self, reference: torch.Tensor, device: torch.device | str, batch_size: int = 100):
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        weights = str(inception_weights_path())
        self.fid = FrechetInceptionDistance(
            feature=2048, reset_real_features=False, feature_extractor_weights_path=weights
        ).to(device)
        self.kid = KernelInceptionDistance(feature=self.fid.inception, reset_real_features=False).to(device)
        self.device = device
        self.batch_size = batch_size
        self.num_real = len(reference)
        self._update(reference, real=True)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size].to(self.device)
            batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            self.fid.update(batch, real=real)
            self.kid.update(batch, real=real)

    def __call__(self, generated: torch.Tensor) -> dict[str, float]:
        """FID, KID mean and KID std of uint8 generated images against the reference."""
        self.fid.reset()
        self.kid.reset()
        self._update(generated, real=False)
        self.kid.subset_size = min(1000, len(generated), self.num_real)
        with torch.random.fork_rng(devices=[]):  # KID draws its subsets from torch's global generator
            torch.manual_seed(KID_SUBSET_SEED)
            kid_mean, kid_std = self.kid.compute()
        return {"fid": self.fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def load_dinov2(device: torch.device | str) -> tuple[nn.Module | None, str | None]:
    """A local DINOv2 (transformers) for FD-DINOv2, or None and a one-line reason."""
    try:
        import transformers
    except ImportError:
        return None, "FD-DINOv2 skipped: transformers is not installed"
    name = os.environ.get("DDPM_ZOO_DINOV2", DINOV2_CHECKPOINT)
    try:
        model = transformers.AutoModel.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None, f"FD-DINOv2 skipped: no local DINOv2 checkpoint {name!r} (set DDPM_ZOO_DINOV2 to one)"
    return model.to(device).eval(), None


@torch.no_grad()
def dinov2_features(
    model: nn.Module, images: torch.Tensor, device: torch.device | str, batch_size: int = 50
) -> torch.Tensor:
    """CLS features (Stein et al., 2023) of uint8 images: bicubic resize to 224, ImageNet normalisation."""
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)
    features = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device).float() / 255.0
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
        batch = F.interpolate(batch, size=(224, 224), mode="bicubic", antialias=True).clamp(0, 1)
        features.append(model(pixel_values=(batch - mean) / std).pooler_output.double().cpu())
    return torch.cat(features)


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


# --------------------------------------------------------------------------- evaluating a pipeline


def is_digit_model(pipeline) -> bool:
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


def balanced_labels(count: int, classes: int) -> torch.Tensor:
    """0, 1, ..., classes-1, 0, 1, ...: every class equally often (to within one)."""
    return torch.arange(count) % classes


@contextlib.contextmanager
def progress_bar_disabled(pipeline) -> Iterator[None]:
    """The pipeline's per-step bar off (evaluation draws one over the batches); the caller's setting back after."""
    previous = dict(getattr(pipeline, "_progress_bar_config", {}))
    pipeline.set_progress_bar_config(**{**previous, "disable": True})
    try:
        yield
    finally:
        pipeline.set_progress_bar_config(**previous)


def generate(
    pipeline,
    num_samples: int,
    batch_size: int,
    num_inference_steps: int,
    seed: int,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    color_labels: torch.Tensor | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, float]:
    """Sample `num_samples` images as uint8 NCHW (as if saved to PNG) and the seconds spent sampling.

    One CPU generator seeded with `seed` drives all batches, so a run is reproducible on any device.
    """
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    with progress_bar_disabled(pipeline):
        batches, seconds = [], 0.0
        for start in tqdm(range(0, num_samples, batch_size), desc="sampling", disable=not progress, leave=False):
            count = min(batch_size, num_samples - start)
            kwargs: dict[str, Any] = {"generator": generator, "num_inference_steps": num_inference_steps}
            if class_labels is not None:
                kwargs["class_labels"] = class_labels[start : start + count].tolist()
            else:
                kwargs["batch_size"] = count
            if guidance_scale is not None:
                kwargs["guidance_scale"] = guidance_scale
            if color_labels is not None:
                kwargs["color_labels"] = color_labels[start : start + count].tolist()
            began = time.perf_counter()
            try:
                images = pipeline(output_type="pt", **kwargs).images
            except ValueError as error:
                raise UserInputError(str(error)) from None
            images = (images.float() * 255).round().clamp(0, 255).to(torch.uint8).cpu()
            seconds += time.perf_counter() - began
            batches.append(images)
        return torch.cat(batches), seconds


def digit_metrics(
    images: torch.Tensor, context: EvaluationContext, labels: torch.Tensor | None, colors: torch.Tensor | None
) -> dict[str, Any]:
    """Recognisability, FD in classifier features, and where they apply conditional and color accuracy."""
    probabilities, features = classify(images)
    predicted = probabilities.argmax(dim=1)
    row: dict[str, Any] = {"recognisability": recognisability(probabilities)}
    if labels is not None:
        row["conditional_accuracy"] = conditional_accuracy(probabilities, labels)
    row["fd_digits"] = frechet_distance(*feature_statistics(features), *context.digit_statistics())
    if images.shape[1] == 3:
        row["color_accuracy"] = color_accuracy(images, colors)
        row["color_reference"] = "requested" if colors is not None else "palette"
        row["color_counts"] = color_counts(images)
    row["digit_counts"] = torch.bincount(predicted, minlength=NUM_DIGITS).tolist()
    return row


def extra_metrics(images: torch.Tensor, context: EvaluationContext) -> dict[str, float]:
    """FID/KID and FD-DINOv2 where their weights are available (else skipped with a message, once)."""
    row: dict[str, float] = {}
    inception = context.inception()
    if inception is not None:
        row.update(inception(images))
    dinov2 = context.dinov2()
    if dinov2 is not None:
        model, reference_stats = dinov2
        generated = feature_statistics(dinov2_features(model, images, context.device))
        row["fd_dinov2"] = frechet_distance(*generated, *reference_stats)
    return row


def make_context(
    pipeline,
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


def evaluate_pipeline(
    pipeline,
    num_samples: int = 5000,
    batch_size: int = 250,
    scheduler: str | None = "dpmsolver",
    num_inference_steps: int = 25,
    guidance_scale: float | None = None,
    seed: int = 0,
    digits: bool | None = None,
    reference: Reference | str | None = None,
    extra: bool = True,
    context: EvaluationContext | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Sample `num_samples` images under one setting and score them; returns one result row.

    The defaults are protocol v1 (docs/evaluation.md): N = 5,000 in batches of 250, DPM-Solver++ 25 steps,
    seed 0. `scheduler` is a ddpm-zoo scheduler name (None keeps the pipeline's own); `guidance_scale` None uses
    the pipeline's default. Digit models get recognisability and FD in classifier features, plus
    conditional accuracy (class-conditional) and color accuracy (RGB); FID/KID and FD-DINOv2 are added
    when available and `extra` is set. Labels are balanced over the classes.
    """
    if num_samples < 2 or batch_size < 1 or num_inference_steps < 1:
        raise UserInputError("num_samples must be >= 2, batch_size and num_inference_steps >= 1")
    context = context or make_context(pipeline, digits, reference, extra)
    original = pipeline.scheduler
    if scheduler is not None:
        from ddpm_zoo.schedulers import make_scheduler

        pipeline.scheduler = make_scheduler(scheduler, original.config)
    try:
        row = _evaluate_setting(
            pipeline, num_samples, batch_size, num_inference_steps, guidance_scale, seed, context, progress
        )
    finally:
        pipeline.scheduler = original
    return row


def requested_labels(pipeline, num_samples: int, seed: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Balanced digit labels for a class-conditional pipeline and, for one that takes `color_labels`
    (joint digit-and-color conditioning), balanced colors in a seeded order; None where not taken."""
    parameters = call_parameters(pipeline)
    labels = balanced_labels(num_samples, num_classes(pipeline)) if "class_labels" in parameters else None
    colors = None
    if "color_labels" in parameters:
        order = torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))
        colors = balanced_labels(num_samples, len(COLOR_NAMES))[order]
    return labels, colors


def _evaluate_setting(
    pipeline,
    num_samples: int,
    batch_size: int,
    num_inference_steps: int,
    guidance_scale: float | None,
    seed: int,
    context: EvaluationContext,
    progress: bool,
) -> dict[str, Any]:
    from ddpm_zoo.schedulers import scheduler_name

    labels, colors = requested_labels(pipeline, num_samples, seed)
    if not takes_guidance(pipeline):
        guidance_scale = None
    elif guidance_scale is None:
        guidance_scale = default_guidance_scale(pipeline)
    images, seconds = generate(
        pipeline, num_samples, batch_size, num_inference_steps, seed, labels, guidance_scale, colors, progress
    )
    row: dict[str, Any] = {
        "scheduler": scheduler_name(pipeline.scheduler) or type(pipeline.scheduler).__name__,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "samples_per_second": num_samples / max(seconds, 1e-9),
    }
    if context.digits:
        row.update(digit_metrics(images, context, labels, colors))
    row.update(extra_metrics(images, context))
    return row


def check_step_counts(pipeline, schedulers: Sequence[str | None], steps: Sequence[int]) -> None:
    """Refuse, before any sampling, a step count that a sampler does not take (DDPM and DDIM: no more than
    the training schedule's steps); a scheduler name None is the pipeline's own."""
    from ddpm_zoo.schedulers import make_scheduler

    config = pipeline.scheduler.config
    for name in schedulers:
        scheduler = make_scheduler(name, config) if name is not None else type(pipeline.scheduler).from_config(config)
        for num_steps in steps:
            try:
                scheduler.set_timesteps(num_steps)
            except ValueError as error:
                raise UserInputError(f"{name or 'the saved scheduler'} at {num_steps} steps: {error}") from None


def sweep(
    pipeline,
    schedulers: Sequence[str | None] = ("dpmsolver",),
    steps: Sequence[int] = (25,),
    guidance_scales: Sequence[float | None] = (None,),
    num_samples: int = 5000,
    batch_size: int = 250,
    seed: int = 0,
    context: EvaluationContext | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """One `evaluate_pipeline` row per (scheduler, steps, guidance) combination, all with the same seed;
    guidance is ignored (a single row per scheduler and steps) for pipelines without any."""
    check_step_counts(pipeline, schedulers, steps)
    context = context or make_context(pipeline)
    guidance_scales = guidance_scales if takes_guidance(pipeline) else (None,)
    rows = []
    for scheduler in schedulers:
        for num_steps in steps:
            for guidance in guidance_scales:
                row = evaluate_pipeline(
                    pipeline,
                    num_samples,
                    batch_size,
                    scheduler,
                    num_steps,
                    guidance,
                    seed,
                    context=context,
                    progress=progress,
                )
                rows.append(row)
                if progress:
                    print(format_table([row], header=len(rows) == 1), flush=True)
    return rows


# --------------------------------------------------------------------------- reporting

TABLE_COLUMNS = (
    ("scheduler", "scheduler", "{}"),
    ("num_inference_steps", "steps", "{}"),
    ("guidance_scale", "guidance", "{:g}"),
    ("conditional_accuracy", "cond. acc.", "{:.3f}"),
    ("recognisability", "recognisable", "{:.3f}"),
    ("fd_digits", "FD (digits)", "{:.3f}"),
    ("color_accuracy", "color acc.", "{:.3f}"),
    ("fid", "FID", "{:.2f}"),
    ("kid", "KID", "{:.4f}"),
    ("fd_dinov2", "FD-DINOv2", "{:.1f}"),
    ("samples_per_second", "samples/s", "{:.1f}"),
)


def format_table(rows: Sequence[dict[str, Any]], header: bool = True) -> str:
    """Rows as a fixed-width text table (Markdown-compatible); columns no row has are left out."""
    columns = [c for c in TABLE_COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    widths = [max(len(title), 9) for _, title, _ in columns]
    lines = []
    if header:
        lines.append("| " + " | ".join(title.ljust(w) for (_, title, _), w in zip(columns, widths, strict=True)) + " |")
        lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        cells = [
            (fmt.format(row[key]) if row.get(key) is not None else "-").ljust(width)
            for (key, _, fmt), width in zip(columns, widths, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_document(model: str, rows: list[dict[str, Any]], context: EvaluationContext) -> dict[str, Any]:
    """The JSON written next to the model: protocol, reference, skipped metrics and result rows."""
    from ddpm_zoo import __version__

    metadata = classifier_metadata() if context.digits else {}
    return {
        "model": model,
        "ddpm_zoo_version": __version__,
        "task_type": TASK_TYPE,
        "reference": {
            "name": context.reference.name,
            "dataset_type": context.reference.dataset_type,
            "dataset_name": context.reference.dataset_name,
            "num_images": len(context.reference.images),
        },
        "digit_classifier": (
            {
                "sha256": metadata["sha256"],
                "test_accuracy": metadata["test_accuracy"],
                "confidence_threshold": CONFIDENCE_THRESHOLD,
            }
            if context.digits
            else None
        ),
        "skipped": dict(context.skipped),
        "results": rows,
    }


def write_results(document: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the results JSON (atomically; strict JSON, so a non-finite number is a ValueError) and return
    its path."""
    from ddpm_zoo.outputs import writing

    path = Path(path)
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        partial.write_text(text)
        os.replace(partial, path)
    return path


CARD_METRICS = (
    ("conditional_accuracy", "conditional_accuracy", "Conditional accuracy (digit classifier)"),
    ("recognisability", "recognisability", "Recognisability (digit classifier confidence >= 0.9)"),
    ("fd_digits", "fd_digits", "FD in digit-classifier features"),
    ("color_accuracy", "color_accuracy", "Color accuracy"),
    ("fid", "fid", "FID (torchmetrics, Inception)"),
    ("kid", "kid", "KID (torchmetrics, Inception)"),
    ("fd_dinov2", "fd_dinov2", "FD-DINOv2"),
)


def eval_results_for_card(results: dict[str, Any] | list[dict[str, Any]], row: int = 0) -> list:
    """`huggingface_hub.EvalResult`s for a model card's model-index, from one row (default the first) of
    a results document (or a list of rows); the setting is given as each metric's `metric_config`."""
    from huggingface_hub import EvalResult

    document = results if isinstance(results, dict) else {"results": list(results)}
    rows = document.get("results") or []
    if not rows:
        return []
    chosen = rows[row]
    reference = document.get("reference") or {"dataset_type": EMBEDDED_MNIST, "dataset_name": EMBEDDED_MNIST}
    setting = describe_setting(chosen)
    return [
        EvalResult(
            task_type=TASK_TYPE,
            dataset_type=reference["dataset_type"],
            dataset_name=reference["dataset_name"],
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=round(float(chosen[key]), 4),
            metric_config=setting,
        )
        for key, metric_type, metric_name in CARD_METRICS
        if chosen.get(key) is not None
    ]


def card_row(rows: Sequence[dict[str, Any]], default_guidance: float | None) -> int:
    """The row a model card reports: the first at the pipeline's default guidance (what a plain call
    samples), else the first."""
    return next((i for i, row in enumerate(rows) if row.get("guidance_scale") == default_guidance), 0)


def describe_setting(row: dict[str, Any]) -> str:
    """'dpmsolver, 25 steps, guidance 3, 5000 samples in batches of 250, seed 0' (rows written before the
    batch size was recorded leave it out)."""
    parts = [str(row.get("scheduler")), f"{row.get('num_inference_steps')} steps"]
    if row.get("guidance_scale") is not None:
        parts.append(f"guidance {row['guidance_scale']:g}")
    samples = f"{row.get('num_samples')} samples"
    if row.get("batch_size") is not None:
        samples += f" in batches of {row['batch_size']}"
    parts += [samples, f"seed {row.get('seed')}"]
    return ", ".join(parts)


# --------------------------------------------------------------------------- command line


def add_cli_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `evaluate` (ddpm_zoo.commands.evaluate) for the `ddpm-zoo` entry point."""
    from ddpm_zoo.commands import evaluate  # the command imports this module; the entry point will register it

    evaluate.add_parser(subparsers)


def output_path(model: str, output: str | None) -> Path:
    """Where the JSON goes: --output (a .json file, or a folder), else next to the model."""
    if output is not None:
        target = Path(output)
        return target if target.suffix == ".json" else target / RESULTS_FILE
    return Path(model) / RESULTS_FILE if Path(model).is_dir() else Path.cwd() / RESULTS_FILE


def update_model_card(folder: Path, document: dict[str, Any], row: int, results_path: Path) -> None:
    """Put row `row` of the results into a trained folder's model card, but only when they went to the
    folder's own eval_results.json and have metrics for the card; a training_summary.json that cannot be
    used is one warning line (the results are written by then)."""
    from ddpm_zoo.hub import refresh_model_card

    if results_path.resolve() != (folder / RESULTS_FILE).resolve():
        print(f"model card left alone: it reports {folder / RESULTS_FILE} only, and these results went elsewhere")
        return
    eval_results = eval_results_for_card(document, row)
    if not eval_results:
        print("model card left alone: these results have no metric for it")
        return
    try:
        card = refresh_model_card(folder, eval_results)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        summary = folder / "training_summary.json"
        print(
            f"warning: model card left alone: {summary} cannot be used ({type(error).__name__}: {error})",
            file=sys.stderr,
        )
        return
    if card is not None:
        print(f"model card updated with these results: {card}")

"""The digit classifier that ships with the package (``data_files/digit_classifier.safetensors``, trained by
``scripts/train_digit_classifier.py``): its network, its checked weights, its fixed test split, and
classifying generated digits."""

import hashlib
import json
import os
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ddpm_zoo.errors import UserInputError

DIGIT_SIZE = 28
NUM_DIGITS = 10
CLASSIFIER_FILE = "data_files/digit_classifier.safetensors"
CLASSIFIER_METADATA_FILE = "data_files/digit_classifier.json"
TEST_PER_CLASS = 50


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

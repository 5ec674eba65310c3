"""Metric functions on generated images: recognisability and conditional accuracy from classifier
probabilities, Frechet distances between feature sets, and the color of RGB digits."""

import math

import torch

from ddpm_zoo.data import COLOR_NAMES, COLOR_PALETTE
from ddpm_zoo.errors import UserInputError

CONFIDENCE_THRESHOLD = 0.9
FOREGROUND_THRESHOLD = 0.5
COLOR_AGREEMENT = 0.9
COLOR_TOLERANCE = 0.25


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

"""Quality of a 2-D point model: energy distance to fresh data against the data-vs-data floor, and for the eight
Gaussians the share of samples near a mode, the balance over modes and the accuracy of a requested mode.

Energy distance (Székely & Rizzo, 2013): D^2(P, Q) = 2 E|X - Y| - E|X - X'| - E|Y - Y'| >= 0, zero only for
P = Q. With N samples its estimate is biased upward by about the size of its noise, so a model is judged against
the same estimate between two independent draws of the data at the same N (the floor).
"""

from dataclasses import dataclass

import numpy as np
import torch

from ddpm_zoo import points as points_lib


def energy_distance(x: np.ndarray, y: np.ndarray) -> float:
    """The V-statistic of D^2 between point sets x (N, 2) and y (M, 2), in float64."""
    a, b = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


@dataclass
class PointQuality:
    """Energy distance of the samples to fresh data, the data-vs-data floor at the same N, their ratio, and for
    the eight Gaussians the mode statistics (None elsewhere)."""

    count: int
    energy_distance: float
    floor: float
    near_mode: float | None = None
    mode_balance: float | None = None
    mode_accuracy: float | None = None

    @property
    def ratio(self) -> float:
        return self.energy_distance / self.floor if self.floor > 0 else float("inf")


def nearest_modes(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest of the eight modes for each sample, and whether it lies within 3 sigma of it (which holds for
    1 - exp(-9 / 2) = 0.989 of the data itself: the distance to a 2-D Gaussian's centre is Rayleigh)."""
    distances = np.linalg.norm(samples[:, None, :] - points_lib.mode_centres()[None], axis=2)
    return distances.argmin(axis=1), distances.min(axis=1) <= 3 * points_lib.EIGHT_GAUSSIANS_STD


def mode_balance(modes: np.ndarray) -> float:
    """exp(entropy) of the share of samples per mode, divided by 8: 1 for equal shares, 1/8 for one mode."""
    shares = np.bincount(modes, minlength=8) / max(len(modes), 1)
    shares = shares[shares > 0]
    return float(np.exp(-(shares * np.log(shares)).sum()) / 8)


def point_quality(
    samples: np.ndarray, dataset_name: str, seed: int = 1, requested: np.ndarray | None = None
) -> PointQuality:
    """Judge samples (N, 2) of the generated set `dataset_name`: energy distance to N fresh points (seed `seed`,
    unseen in training at seed 0) against the distance between two fresh draws of N; for the eight Gaussians
    also the mode statistics, and with `requested` modes the share of samples in the requested one."""
    count = len(samples)
    fresh = points_lib.generate(dataset_name, count, seed).points.numpy()
    other = points_lib.generate(dataset_name, count, seed + 1).points.numpy()
    quality = PointQuality(count, energy_distance(samples, fresh), energy_distance(other, fresh))
    if dataset_name == "eight-gaussians":
        modes, near = nearest_modes(samples)
        quality.near_mode = float(near.mean())
        quality.mode_balance = mode_balance(modes[near])
        if requested is not None:
            quality.mode_accuracy = float(((modes == np.asarray(requested)) & near).mean())
    return quality


def sample_points(
    pipeline, count: int, steps: int | None, guidance_scale: float | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """`count` samples of a point pipeline and, for a conditional one, the modes asked for (an equal share each)."""
    generator = torch.Generator().manual_seed(seed)
    if not pipeline.num_classes:
        return pipeline(batch_size=count, num_inference_steps=steps, generator=generator).points, None
    requested = np.arange(count) % pipeline.num_classes
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    found = pipeline(class_labels=requested.tolist(), num_inference_steps=steps, generator=generator, **guidance)
    return found.points, requested


def describe_quality(quality: PointQuality) -> str:
    """One line: the energy distance against its floor, and the mode statistics where there are some."""
    line = f"energy distance {quality.energy_distance:.5f} = {quality.ratio:.2f}x the data floor {quality.floor:.5f}"
    if quality.near_mode is not None:
        line += f"; within 3 sigma of a mode {quality.near_mode:.3f}, mode balance {quality.mode_balance:.3f}"
    if quality.mode_accuracy is not None:
        line += f", in the requested mode {quality.mode_accuracy:.3f}"
    return f"{line} (N = {quality.count})"

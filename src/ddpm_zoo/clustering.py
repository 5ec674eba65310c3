"""k-means pseudo-labels for self-guidance: unlabelled training images grouped by pixel similarity.

Self-guided diffusion (Hu et al., 2023, "Self-Guided Diffusion Models") conditions the denoiser on
cluster assignments found without labels and samples with classifier-free guidance over them.
"""

from dataclasses import dataclass

import torch

from ddpm_zoo.errors import UserInputError


@dataclass(frozen=True)
class Clusters:
    """Cluster index per image (N,) and the number of images in each cluster (K,)."""

    assignments: torch.Tensor
    sizes: torch.Tensor


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Initial centroids, each drawn with probability proportional to its squared distance to the
    nearest centroid drawn so far (Arthur & Vassilvitskii, 2007)."""
    first = torch.randint(len(points), (1,), generator=generator)
    centroids = points[first]
    nearest = torch.cdist(points, centroids).squeeze(1).square()
    for _ in range(k - 1):
        index = torch.multinomial(nearest / nearest.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, points[index]])
        nearest = torch.minimum(nearest, torch.cdist(points, points[index]).squeeze(1).square())
    return centroids


def kmeans(points: torch.Tensor, k: int, seed: int, max_iterations: int = 100) -> Clusters:
    """Lloyd's algorithm from a k-means++ start, until no assignment changes (or `max_iterations`).

    Deterministic for a seed, so every process of a run (and a resumed run) finds the same clusters.
    An emptied cluster keeps its centroid.
    """
    points = points.double()
    if not 2 <= k <= len(points):
        raise UserInputError(
            f"--self_guidance_clusters must be between 2 and the number of images, {len(points)}; got {k}"
        )
    centroids = kmeans_plus_plus(points, k, torch.Generator().manual_seed(seed))
    assignments = torch.cdist(points, centroids).argmin(dim=1)
    for _ in range(max_iterations):
        sizes = torch.bincount(assignments, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assignments, points)
        occupied = sizes > 0
        centroids[occupied] = sums[occupied] / sizes[occupied].unsqueeze(1)
        updated = torch.cdist(points, centroids).argmin(dim=1)
        if torch.equal(updated, assignments):
            break
        assignments = updated
    return Clusters(assignments, torch.bincount(assignments, minlength=k))


def cluster_images(images: torch.Tensor, k: int, seed: int) -> Clusters:
    """k-means of uint8 images (N, C, H, W) on their pixels scaled to [0, 1]."""
    return kmeans(images.flatten(start_dim=1).float().div(255), k, seed)

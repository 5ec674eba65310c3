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


def squared_distances(points: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
    """Squared distance of each point (N, D) to one point (1, D); exactly 0 for a duplicate (cdist's
    matrix-product shortcut can leave rounding noise there)."""
    return torch.cdist(points, point, compute_mode="donot_use_mm_for_euclid_dist").squeeze(1).square()


def kmeans_plus_plus(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """Initial centroids, each drawn with probability proportional to its squared distance to the
    nearest centroid drawn so far (Arthur & Vassilvitskii, 2007). Every centroid is a distinct point,
    so fewer than k distinct points are refused."""
    first = torch.randint(len(points), (1,), generator=generator)
    centroids = points[first]
    nearest = squared_distances(points, centroids)
    for drawn in range(1, k):
        total = nearest.sum()
        if total == 0:  # every point coincides with a centroid: only `drawn` distinct points
            raise UserInputError(
                f"only {drawn} distinct image(s) for {k} clusters; lower --self_guidance_clusters (0 turns it off)"
            )
        index = torch.multinomial(nearest / total, 1, generator=generator)
        centroids = torch.cat([centroids, points[index]])
        nearest = torch.minimum(nearest, squared_distances(points, points[index]))
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

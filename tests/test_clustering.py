"""k-means pseudo-labels for self-guidance."""

import pytest
import torch

from ddpm_zoo.clustering import cluster_images, kmeans
from ddpm_zoo.errors import UserInputError


def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """Three well-separated Gaussian blobs of 30, 20 and 10 points in 5 dimensions, and their true labels."""
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0] * 5, [10.0] * 5, [-10.0, 10.0, -10.0, 10.0, -10.0]])
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 10)
    return centers[labels] + torch.randn(60, 5, generator=generator), labels


def test_kmeans_recovers_separated_blobs():
    points, labels = blobs()
    clusters = kmeans(points, 3, seed=0)
    assert sorted(clusters.sizes.tolist()) == [10, 20, 30]
    for label in range(3):  # each true blob lands in exactly one cluster
        assert len(clusters.assignments[labels == label].unique()) == 1
    assert len(clusters.assignments.unique()) == 3


def test_kmeans_is_deterministic_for_a_seed():
    points = torch.randn(200, 4, generator=torch.Generator().manual_seed(1))
    first, again = kmeans(points, 5, seed=3), kmeans(points, 5, seed=3)
    assert torch.equal(first.assignments, again.assignments)
    assert first.sizes.sum() == 200 and len(first.sizes) == 5


@pytest.mark.parametrize("k", [1, 61])
def test_cluster_count_out_of_range(k):
    points, _ = blobs()
    with pytest.raises(UserInputError, match=f"between 2 and the number of images, 60; got {k}"):
        kmeans(points, k, seed=0)


def test_cluster_images_groups_uint8_images_by_pixels():
    generator = torch.Generator().manual_seed(2)
    dark = torch.randint(0, 40, (6, 1, 4, 4), generator=generator, dtype=torch.uint8)
    light = torch.randint(215, 256, (4, 1, 4, 4), generator=generator, dtype=torch.uint8)
    clusters = cluster_images(torch.cat([dark, light]), 2, seed=0)
    assert len(clusters.assignments[:6].unique()) == 1 and len(clusters.assignments[6:].unique()) == 1
    assert sorted(clusters.sizes.tolist()) == [4, 6]


@pytest.mark.parametrize("distinct, k", [(1, 5), (2, 3)])
def test_fewer_distinct_images_than_clusters_is_a_clear_error(distinct, k):
    images = torch.arange(distinct, dtype=torch.uint8).mul(100).view(-1, 1, 1, 1).expand(distinct, 1, 4, 4)
    duplicated = images.repeat(40 // distinct, 1, 1, 1)
    with pytest.raises(UserInputError, match=f"only {distinct} distinct image\\(s\\) for {k} clusters"):
        cluster_images(duplicated, k, seed=0)


def test_duplicated_images_cluster_when_there_are_enough_distinct_ones():
    images = torch.tensor([0, 100, 200], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 4, 4).repeat(10, 1, 1, 1)
    clusters = cluster_images(images, 3, seed=0)
    assert clusters.sizes.tolist() == [10, 10, 10]

"""The 2-D toy: seeded point generators, tables of points, the MLP, the point pipeline and the toy runs."""

import datasets
import numpy as np
import pytest
import torch

from ddpm_zoo import data as data_lib
from ddpm_zoo import points
from ddpm_zoo.errors import DataError


@pytest.mark.parametrize("name", sorted(points.GENERATORS))
def test_generators_are_seeded_and_deterministic(name):
    first, again, other = points.generate(name, 500, 7), points.generate(name, 500, 7), points.generate(name, 500, 8)
    assert first.points.shape == (500, 2) and first.points.dtype == torch.float32
    assert torch.equal(first.points, again.points)
    assert not torch.equal(first.points, other.points)
    assert 0.5 < float(first.points.std()) < 2.5  # about unit spread, so one noise schedule serves all
    if first.labels is not None:
        assert torch.equal(first.labels, again.labels)
        assert int(first.labels.max()) < len(first.class_names)


def test_eight_gaussians_label_each_point_with_its_mode():
    found = points.generate("eight-gaussians", 2000, 0)
    centres = torch.from_numpy(points.mode_centres()).float()
    nearest = torch.cdist(found.points, centres).argmin(dim=1)
    assert torch.equal(nearest, found.labels)
    assert found.class_names == points.MODE_NAMES


def test_unknown_generated_set_is_one_clear_error():
    with pytest.raises(DataError, match="choose one of: swiss-roll"):
        points.generate("spiral")


@pytest.mark.parametrize("kind", ["csv", "parquet", "saved"])
def test_points_are_read_from_csv_parquet_and_saved_tables(tmp_path, kind):
    table = datasets.Dataset.from_dict({"x": [0.0, 1.0, 2.0], "y": [3.0, 4.0, 5.0], "label": [0, 1, 1]})
    target = tmp_path / "points"
    if kind == "csv":
        target = tmp_path / "points.csv"
        table.to_csv(str(target), index=False)
    elif kind == "parquet":
        target = tmp_path / "points.parquet"
        table.to_parquet(str(target))
    else:
        table.save_to_disk(str(target))
    loaded = data_lib.load_point_data(None, str(target), cache_dir=str(tmp_path / "cache"))
    assert torch.equal(loaded.images, torch.tensor([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]))
    assert loaded.labels.tolist() == [0, 1, 1] and loaded.class_names == ("0", "1")


def test_a_table_without_two_numeric_columns_is_refused(tmp_path):
    path = tmp_path / "words.csv"
    path.write_text("name,colour\na,b\n")
    with pytest.raises(DataError, match="two numeric columns"):
        data_lib.load_point_data(None, str(path), cache_dir=str(tmp_path / "cache"))


def test_model_space_maps_pixels_and_keeps_points():
    assert torch.equal(data_lib.to_model_space(torch.tensor([0, 255], dtype=torch.uint8)), torch.tensor([-1.0, 1.0]))
    values = torch.from_numpy(np.array([[0.25, -3.0]], dtype=np.float32))
    assert torch.equal(data_lib.to_model_space(values), values)

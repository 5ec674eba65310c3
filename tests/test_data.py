"""Data sources give the right shapes, dtypes, channels and labels; bad data gets a clear error."""

import os
import subprocess
import sys
import time

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_zoo import data
from ddpm_zoo.errors import DataError


@pytest.fixture(scope="module")
def mnist():
    return data.load_image_source("mnist-5k")


def test_mnist_5k_is_500_real_digits_per_class(mnist):
    images, labels = data.load_mnist_5k_arrays()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    assert data.mnist_5k_content_digest(images, labels) == data.MNIST_5K_CONTENT_SHA256
    assert mnist.image_column == "image" and mnist.label_column == "label" and mnist.color_column is None
    assert mnist.class_names[7] == "seven"
    first = mnist.dataset[0]
    assert first["image"].mode == "L" and first["image"].size == (28, 28)


def test_decode_keeps_grayscale_one_channel_with_labels(mnist):
    decoded = data.decode_dataset(mnist, resolution=28, channels=1, with_labels=True)
    assert decoded.images.shape == (5000, 1, 28, 28)
    assert decoded.images.dtype == torch.uint8
    assert decoded.labels.dtype == torch.long and decoded.labels.bincount().tolist() == [500] * 10
    raw, _ = data.load_mnist_5k_arrays()
    assert torch.equal(decoded.images[:, 0], torch.from_numpy(raw))


def test_decode_resizes_to_the_resolution(mnist):
    small = mnist.dataset.select(range(8))
    decoded = data.decode_dataset(data.ImageSource(small, "image", "label"), resolution=16, channels=1)
    assert decoded.images.shape == (8, 1, 16, 16)


def test_grayscale_into_an_rgb_model_needs_convert_channels(mnist):
    small = data.ImageSource(mnist.dataset.select(range(4)), "image", "label")
    with pytest.raises(DataError, match="has 1 channel\\(s\\) but the model expects 3; pass --convert_channels"):
        data.decode_dataset(small, resolution=28, channels=3)
    converted = data.decode_dataset(small, resolution=28, channels=3, convert_channels=True)
    assert converted.images.shape == (4, 3, 28, 28)
    assert torch.equal(converted.images[:, 0], converted.images[:, 2])


def _write_folder(root, colors=("red", "blue"), per_class=3, size=12):
    for color in colors:
        folder = root / color
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size + 4), color).save(folder / f"{i}.png")
    return root


def test_image_folder_gives_rgb_images_and_class_labels(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    source = data.load_image_source(None, train_data_dir=str(root))
    assert source.class_names == ("blue", "red")
    decoded = data.decode_dataset(source, resolution=8, channels=3, with_labels=True)
    assert decoded.images.shape == (6, 3, 8, 8)
    assert sorted(decoded.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    red = decoded.images[decoded.labels == 1]
    assert red[:, 0].min() == 255 and red[:, 2].max() == 0
    # Plain NCHW: an NHWC-strided batch would silently run the UNet in channels_last (slower on CPU).
    assert decoded.images.is_contiguous()


def test_parquet_files_are_a_source(tmp_path, mnist):
    mnist.dataset.select(range(20)).to_parquet(str(tmp_path / "train.parquet"))
    source = data.load_image_source(None, train_data_dir=str(tmp_path))
    decoded = data.decode_dataset(source, resolution=28, channels=1, with_labels=True)
    assert decoded.images.shape == (20, 1, 28, 28) and decoded.labels.shape == (20,)


def test_corrupt_image_is_named_or_skipped(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    source = data.load_image_source(None, train_data_dir=str(root))
    with pytest.raises(DataError, match="broken.png.*--skip_bad_images"):
        data.decode_dataset(source, resolution=8, channels=3)
    decoded = data.decode_dataset(source, resolution=8, channels=3, skip_bad_images=True, with_labels=True)
    assert decoded.skipped == 1 and decoded.images.shape[0] == 6 and decoded.labels.shape == (6,)


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_data_dir_is_a_clear_error(tmp_path, make):
    path = tmp_path / "data"
    if make == "empty":
        path.mkdir()
    with pytest.raises(DataError, match="does not exist|holds no images"):
        data.load_image_source(None, train_data_dir=str(path))


def test_missing_label_column_for_conditional_training(tmp_path):
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (8, 8))] * 4}, features=datasets.Features({"image": datasets.Image()})
    )
    source = data.ImageSource(dataset, "image", None)
    with pytest.raises(DataError, match="conditional training needs a label column"):
        data.decode_dataset(source, resolution=8, channels=1, with_labels=True)


def test_colorizer_is_deterministic_and_keeps_digit_shape(mnist):
    decoded = data.decode_dataset(
        data.ImageSource(mnist.dataset.select(range(64)), "image", "label"), 28, 1, with_labels=True
    )
    first, second = data.apply_colorizer(decoded, seed=3), data.apply_colorizer(decoded, seed=3)
    assert torch.equal(first.images, second.images) and torch.equal(first.color_labels, second.color_labels)
    assert not torch.equal(first.color_labels, data.apply_colorizer(decoded, seed=4).color_labels)
    assert first.images.shape == (64, 3, 28, 28)
    assert set(first.color_labels.tolist()) == set(range(len(data.COLOR_NAMES)))
    palette = torch.tensor(list(data.COLOR_PALETTE.values()))
    brightest = first.images.flatten(2).max(dim=2).values.float()
    gray_max = decoded.images.flatten(1).max(dim=1).values.float().view(-1, 1)
    assert torch.equal(brightest, (gray_max / 255 * palette[first.color_labels]).round())
    assert torch.equal(first.labels, decoded.labels)


def test_epoch_plan_deals_disjoint_batches_to_processes():
    plans = [data.EpochIndexPlan(100, 8, seed=1, process_index=r, num_processes=2) for r in range(2)]
    seen = [torch.cat(list(plan.batches(epoch=0))) for plan in plans]
    assert plans[0].batches_per_epoch == 6
    assert len(set(seen[0].tolist()) & set(seen[1].tolist())) == 0
    assert torch.equal(torch.cat(list(plans[0].batches(0, start_batch=2))), seen[0][16:])
    assert not torch.equal(torch.cat(list(plans[0].batches(1))), seen[0])


def test_too_small_dataset_for_one_batch():
    with pytest.raises(DataError, match="fewer than one batch of 64"):
        data.EpochIndexPlan(10, 64, seed=0)


def test_streaming_batches_match_in_memory_batches(mnist):
    source = data.ImageSource(mnist.dataset.select(range(40)), "image", "label", mnist.class_names)
    plan = data.EpochIndexPlan(40, 8, seed=0)
    decoded = data.decode_dataset(source, 28, 1, with_labels=True)
    in_memory = list(data.InMemoryBatches(decoded, plan, "cpu").epoch(0))
    streamed = list(data.StreamingBatches(source, plan, 28, 1, False, num_classes=10, num_workers=0).epoch(0))
    assert len(in_memory) == len(streamed) == 5
    for (a, la), (b, lb) in zip(in_memory, streamed, strict=True):
        assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.slow
def test_offline_hub_dataset_fails_fast_naming_alternatives():
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    code = "from ddpm_zoo.data import load_image_source; load_image_source('ylecun/mnist')"
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - start < 30
    assert result.returncode != 0
    assert "mnist-5k" in result.stderr and "--train_data_dir" in result.stderr


def _labelled_source(labels: list[int]) -> data.ImageSource:
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (8, 8), 10 * i) for i in range(len(labels))], "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    return data.ImageSource(dataset, "image", "label")


def test_streaming_refuses_labels_outside_the_classes_before_the_first_batch():
    source = _labelled_source([0, 1, 2, 3, 4, 5, 1, 2])
    plan = data.EpochIndexPlan(8, 4, seed=0)
    with pytest.raises(DataError, match="label 5 is outside the model's classes 0..4"):
        data.StreamingBatches(source, plan, 8, 1, False, num_classes=5, num_workers=0)
    batches = data.StreamingBatches(source, plan, 8, 1, False, num_classes=6, num_workers=0)
    assert sorted(torch.cat([labels for _, labels in batches.epoch(0)]).tolist()) == [0, 1, 1, 2, 2, 3, 4, 5]


def test_streaming_corrupt_image_is_one_line_from_a_worker_or_skipped(tmp_path, caplog):
    root = _write_folder(tmp_path / "imgs", per_class=4)
    (root / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    source = data.load_image_source(None, train_data_dir=str(root))
    plan = data.EpochIndexPlan(9, 9, seed=0)
    strict = data.StreamingBatches(source, plan, 8, 3, False, num_classes=2, num_workers=1)
    with pytest.raises(DataError) as raised:
        list(strict.epoch(0))
    assert str(raised.value).startswith("cannot read ") and "broken.png" in str(raised.value)
    assert str(raised.value).endswith("(pass --skip_bad_images to skip such files)")
    assert "\n" not in str(raised.value) and "worker" not in str(raised.value)
    lenient = data.StreamingBatches(source, plan, 8, 3, False, num_classes=2, num_workers=1, skip_bad_images=True)
    for _ in range(2):
        ((images, labels),) = list(lenient.epoch(0))
        assert images.shape == (9, 3, 8, 8) and labels.shape == (9,)  # the batch keeps its size
        red = images[:, 0] == 255
        assert torch.equal(red.flatten(1).all(1), labels == 1)  # refilled with a readable image and its label
    assert len([r for r in caplog.records if "broken.png" in r.getMessage()]) == 1  # once per run


def test_streaming_batch_of_only_unreadable_images_is_an_error(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(2):
        (root / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    source = data.load_image_source(None, train_data_dir=str(root))
    batches = data.StreamingBatches(
        source, data.EpochIndexPlan(2, 2, seed=0), 8, 1, False, num_classes=0, num_workers=0, skip_bad_images=True
    )
    with pytest.raises(DataError, match="every image of a batch is unreadable, e.g. cannot read .*broken"):
        list(batches.epoch(0))


def test_a_model_of_neither_1_nor_3_channels_is_refused(mnist):
    small = data.ImageSource(mnist.dataset.select(range(4)), "image", "label")
    message = "the model takes 4 input channels; images can give 1 \\(grayscale\\) or 3 \\(RGB\\)"
    with pytest.raises(DataError, match=message):
        data.decode_dataset(small, 28, 4)
    with pytest.raises(DataError, match=message):
        data.StreamingBatches(small, data.EpochIndexPlan(4, 2, seed=0), 28, 4, False, num_classes=0, num_workers=0)


@pytest.mark.parametrize("broken", ["parquet", "saved"])
def test_broken_dataset_files_are_one_error(tmp_path, broken):
    if broken == "parquet":
        (tmp_path / "train.parquet").write_bytes(b"garbage!")
    else:
        (tmp_path / "dataset_info.json").write_text("{}")
    with pytest.raises(DataError, match=f"cannot read the data in --train_data_dir {tmp_path}: "):
        data.load_image_source(None, train_data_dir=str(tmp_path), cache_dir=str(tmp_path / "cache"))


def test_an_image_column_without_images_is_refused(mnist):
    source = data.ImageSource(mnist.dataset.select(range(4)), "label", None)
    message = "column 'label' holds no images \\(ClassLabel\\); choose another with --image_column"
    with pytest.raises(DataError, match=message):
        data.decode_dataset(source, 28, 1)
    with pytest.raises(DataError, match=message):
        data.StreamingBatches(source, data.EpochIndexPlan(4, 2, seed=0), 28, 1, False, num_classes=0, num_workers=0)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    ramp = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000  # 0..63000
    root = tmp_path / "imgs"
    root.mkdir()
    Image.fromarray(ramp).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode == "I;16"  # a real 16-bit PNG
    source = data.load_image_source(None, train_data_dir=str(root))
    decoded = data.decode_dataset(source, resolution=8, channels=1)
    assert decoded.images[0, 0].tolist() == np.round(ramp / 257).astype(np.uint8).tolist()


def test_32_bit_and_float_grayscale_are_scaled_or_refused():
    ramp = np.arange(64).reshape(8, 8) * 1000
    as_int = data.image_to_array(Image.fromarray(ramp.astype(np.int32)), 8, 1, False, "int.tif")
    assert as_int[0].tolist() == np.round(ramp / 257).astype(np.uint8).tolist()
    as_float = data.image_to_array(Image.fromarray((ramp / 63000).astype(np.float32)), 8, 1, False, "f.tif")
    assert as_float[0].tolist() == np.round(ramp / 63000 * 255).astype(np.uint8).tolist()
    with pytest.raises(DataError, match="big.tif is a mode I image with values outside 0..65535"):
        data.image_to_array(Image.fromarray((ramp * 100).astype(np.int32)), 8, 1, False, "big.tif")
    with pytest.raises(DataError, match="hdr.tif is a mode F image with values outside 0..1"):
        data.image_to_array(Image.fromarray(ramp.astype(np.float32)), 8, 1, False, "hdr.tif")


def test_channel_messages_count_gray_with_alpha_as_one_and_name_who_expects():
    with pytest.raises(DataError, match="la.png has 1 channel\\(s\\) but the model expects 3"):
        data.image_to_array(Image.new("LA", (8, 8)), 8, 3, False, "la.png")
    with pytest.raises(DataError, match="rgb.png has 3 channel\\(s\\) but the colorizer expects 1"):
        data.image_to_array(Image.new("RGB", (8, 8)), 8, 1, False, "rgb.png", needed_by="the colorizer")

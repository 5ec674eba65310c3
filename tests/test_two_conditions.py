"""Models conditioned on two labels (digit and color): the class-embedding layout, composable guidance,
label handling, training's per-label dropout, and the commands end to end on test-sized models."""

import argparse
import json
import shutil
import subprocess
import sys
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from conftest import BLOCK_DDPM_ZOO, launch, tiny_training_args, tiny_unet, write_tiny_unet_config
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from ddpm_zoo.commands import evaluate, sample, visualize
from ddpm_zoo.commands.train import parse_config
from ddpm_zoo.config import validate
from ddpm_zoo.data import COLOR_NAMES
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation.protocol import requested_labels
from ddpm_zoo.generation import FREE, image_labels, label_names
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, joint_label_index
from ddpm_zoo.pipelines.pipeline_ddpm_zoo import composable_guidance
from ddpm_zoo.presets import DIGIT_NAMES
from ddpm_zoo.publish import save_pipeline_folder
from ddpm_zoo.training import PreparedData, Trainer, additive_label_embedding

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES, NUM_COLORS = len(DIGIT_NAMES), len(COLOR_NAMES)
ROWS = (NUM_CLASSES + 1) * (NUM_COLORS + 1)


def two_label_pipeline(channels: int = 3) -> ClassConditionalDDPMPipeline:
    return ClassConditionalDDPMPipeline(
        unet=tiny_unet(channels, 8, num_class_embeds=ROWS),
        scheduler=DDPMScheduler(num_train_timesteps=1000),
        class_names=",".join(DIGIT_NAMES),
        color_names=",".join(COLOR_NAMES),
    )


def test_each_label_pair_has_its_own_class_embedding_row():
    classes = torch.tensor([0, 7, -1, 9, -1])
    colors = torch.tensor([0, 0, 5, -1, -1])
    rows = joint_label_index(classes, colors, NUM_CLASSES, NUM_COLORS)
    assert rows.tolist() == [0, 7 * 7, 10 * 7 + 5, 9 * 7 + 6, 10 * 7 + 6]
    assert joint_label_index(None, None, NUM_CLASSES, NUM_COLORS) == ROWS - 1
    every = joint_label_index(
        torch.arange(-1, NUM_CLASSES).repeat_interleave(NUM_COLORS + 1),
        torch.arange(-1, NUM_COLORS).repeat(NUM_CLASSES + 1),
        NUM_CLASSES,
        NUM_COLORS,
    )
    assert sorted(every.tolist()) == list(range(ROWS))  # one row per pair, nulls included
    assert joint_label_index(torch.tensor([3, -1]), None, NUM_CLASSES, 0).tolist() == [3, 10]  # one label: the class


def unet_at(unet: UNet2DModel, x: torch.Tensor, t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """The UNet's prediction for each image at its own class-embedding row, one image per call."""
    return torch.cat([unet(x[i : i + 1], t, class_labels=torch.tensor([row])).sample for i, row in enumerate(rows)])


@torch.no_grad()
def test_composable_guidance_is_the_hand_computed_combination():
    pipe = two_label_pipeline()
    x, t = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor(500)
    digits, colors = torch.tensor([7, 3, -1, 0]), torch.tensor([0, -1, 4, 2])  # image 1: color free, 2: digit free
    w_digit, w_color = 2.5, 1.5
    found = pipe.guided_prediction(x, t, digits, w_digit, colors, w_color)
    null = unet_at(pipe.unet, x, t, [ROWS - 1] * 4)
    digit = unet_at(pipe.unet, x, t, [7 * 7 + 6, 3 * 7 + 6, ROWS - 1, 0 * 7 + 6])  # (digit, null color)
    both = unet_at(pipe.unet, x, t, [7 * 7 + 0, 3 * 7 + 6, 10 * 7 + 4, 0 * 7 + 2])  # (digit or null, color or null)
    expected = null + w_digit * (digit - null) + w_color * (both - digit)
    torch.testing.assert_close(found, expected, atol=1e-5, rtol=1e-5)
    # a free color leaves plain guidance towards the digit; a free digit, plain guidance towards the color
    torch.testing.assert_close(found[1], (null + w_digit * (digit - null))[1], atol=1e-5, rtol=1e-5)
    color = unet_at(pipe.unet, x, t, [10 * 7 + c for c in (0, 0, 4, 0)])
    torch.testing.assert_close(found[2], (null + w_color * (color - null))[2], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_weights_zero_and_one_reduce_exactly():
    pipe = two_label_pipeline()
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor(300)
    digits, colors = torch.tensor([7, 2]), torch.tensor([0, 5])
    null = pipe.unet(x, t, class_labels=torch.full((2,), ROWS - 1)).sample
    assert torch.equal(pipe.guided_prediction(x, t, digits, 0.0, colors, 0.0), null)  # one call, the null row
    digit_alone = pipe.unet(x, t, class_labels=digits * 7 + 6).sample
    torch.testing.assert_close(pipe.guided_prediction(x, t, digits, 1.0, colors, 0.0), digit_alone)
    both = pipe.unet(x, t, class_labels=digits * 7 + colors).sample  # the conditional prediction
    torch.testing.assert_close(pipe.guided_prediction(x, t, digits, 1.0, colors, 1.0), both)
    color_alone = pipe.unet(x, t, class_labels=10 * 7 + colors).sample
    free = torch.tensor([-1, -1])
    torch.testing.assert_close(pipe.guided_prediction(x, t, free, 3.0, colors, 1.0), color_alone)
    for weight in (2.0, 4.5):  # equal weights: classifier-free guidance on the pair
        pair = null + weight * (both - null)
        torch.testing.assert_close(pipe.guided_prediction(x, t, digits, weight, colors, weight), pair)


def test_guidance_is_one_batched_unet_call_per_step():
    pipe = two_label_pipeline()
    batches = []
    pipe.unet.register_forward_hook(lambda module, args, output: batches.append(len(args[0])))
    pipe(class_labels=[7, 3], color_labels=["red", None], num_inference_steps=3, output_type="np")
    assert batches == [6, 6, 6]  # digit rows, color rows, null rows
    batches.clear()
    pipe(class_labels=[7, 3], num_inference_steps=2, output_type="np")  # colors free: no color rows
    assert batches == [4, 4]


def test_steps_that_change_nothing_or_weigh_nothing_add_no_unet_rows():
    unet, seen = tiny_unet(3, 8, num_class_embeds=ROWS), []
    unet.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    x, t = torch.zeros(2, 3, 8, 8), torch.tensor(10)
    digits = torch.tensor([1 * 7 + 6, 2 * 7 + 6])
    composable_guidance(unet, x, t, [ROWS - 1, digits, digits.clone()], [3.0, 3.0])  # the colors are free
    composable_guidance(unet, x, t, [ROWS - 1, digits, digits - 6], [3.0, 0.0])  # color weight 0
    composable_guidance(unet, x, t, [ROWS - 1, torch.full((2,), ROWS - 1), 10 * 7 + torch.tensor([1, 2])], [3.0, 3.0])
    assert seen == [4, 4, 4]
    composable_guidance(unet, x, t, [ROWS - 1, digits, digits - 6], [0.0, 3.0])  # the class is still the base
    assert seen[-1] == 6


def test_labels_by_name_index_or_none():
    pipe = two_label_pipeline()
    assert pipe.num_classes == NUM_CLASSES and pipe.num_colors == NUM_COLORS
    assert pipe.encode_color_labels(["red", None, 2, "MAGENTA"], 4).tolist() == [0, -1, 2, 5]
    assert pipe.encode_color_labels(None, 3).tolist() == [-1, -1, -1]
    assert pipe.encode_class_labels(["seven", None], 2).tolist() == [7, -1]
    images = pipe(class_labels="seven", color_labels=["red", "blue", None], num_inference_steps=2, output_type="np")
    assert images.images.shape == (3, 8, 8, 3)  # one label is repeated to the other's length
    one = pipe(class_labels=None, color_labels="red", batch_size=2, num_inference_steps=2, output_type="np")
    assert one.images.shape == (2, 8, 8, 3)  # the digit left free


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"color_labels": ["purple"]}, "Unknown color name 'purple'; this model's color names: red, green"),
        ({"color_labels": [6]}, "Color label 6 is outside this model's colors 0..5"),
        ({"color_labels": [1.5]}, "must be an integer index or a color name"),
        ({"class_labels": [10]}, "Class label 10 is outside this model's classes 0..9"),
        ({"class_labels": [1, 2], "color_labels": [1, 2, 3]}, "`batch_size` 3 differs from the 2 `class_labels`"),
        ({"color_guidance_scale": -1.0}, "`guidance_scale` must be a finite number >= 0"),
    ],
)
def test_bad_labels_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        two_label_pipeline()(num_inference_steps=1, **{"class_labels": 7, **kwargs})


def test_a_single_label_model_takes_no_colors_and_no_free_class():
    pipe = ClassConditionalDDPMPipeline(
        unet=tiny_unet(3, 8, num_class_embeds=11), scheduler=DDPMScheduler(), class_names=",".join(DIGIT_NAMES)
    )
    assert pipe.num_colors == 0 and pipe.num_classes == 10
    with pytest.raises(ValueError, match="conditioned on the class alone; it takes no `color_labels`"):
        pipe(class_labels=[7], color_labels=["red"], num_inference_steps=1)
    with pytest.raises(ValueError, match="may not be None"):
        pipe(class_labels=[None], num_inference_steps=1)


def test_an_embedding_that_does_not_fit_the_colors_is_refused():
    pipe = ClassConditionalDDPMPipeline(
        unet=tiny_unet(3, 8, num_class_embeds=11), scheduler=DDPMScheduler(), color_names="red,green"
    )
    with pytest.raises(ValueError, match=r"\(classes \+ 1\) x 3 for 2 colors"):
        _ = pipe.num_classes


def dropped(labels: torch.Tensor, probability: float, colors: int = NUM_COLORS) -> torch.Tensor:
    trainer = SimpleNamespace(
        config=SimpleNamespace(cond_drop_prob=probability),
        data=PreparedData(None, None, DIGIT_NAMES, color_names=COLOR_NAMES[:colors]),
    )
    return Trainer.dropped_labels(trainer, labels)


def test_training_drops_each_label_to_its_own_null_value_independently():
    torch.manual_seed(0)
    count = 200_000
    labels = torch.stack([torch.randint(0, NUM_CLASSES, (count,)), torch.randint(0, NUM_COLORS, (count,))], dim=1)
    rows = dropped(labels, 0.3)
    digit, color = rows // (NUM_COLORS + 1), rows % (NUM_COLORS + 1)
    digit_null, color_null = digit == NUM_CLASSES, color == NUM_COLORS
    assert abs(digit_null.float().mean().item() - 0.3) < 0.005
    assert abs(color_null.float().mean().item() - 0.3) < 0.005
    assert abs((digit_null & color_null).float().mean().item() - 0.09) < 0.005  # independent draws
    assert torch.equal(digit[~digit_null], labels[~digit_null, 0])  # a kept label is the data's
    assert torch.equal(color[~color_null], labels[~color_null, 1])
    assert dropped(labels, 0.0).tolist() == (labels[:, 0] * 7 + labels[:, 1]).tolist()
    single = dropped(labels[:, 0], 0.3, colors=0)  # one label: the class or its null, as before
    assert set(single.unique().tolist()) == set(range(NUM_CLASSES + 1))


def is_additive(table: torch.Tensor) -> bool:
    """Whether every (class, color) row is a_class + b_color: differences between colors are the same for all
    classes."""
    grid = table.view(NUM_CLASSES + 1, NUM_COLORS + 1, -1)
    differences = grid - grid[:, :1]
    return torch.allclose(differences, differences[:1].expand_as(differences), atol=1e-5)


def test_the_label_embedding_is_kept_a_sum_of_a_class_and_a_color_row():
    unet = tiny_unet(3, 8, num_class_embeds=ROWS)
    assert not is_additive(unet.class_embedding.weight)
    additive_label_embedding(unet, NUM_CLASSES, NUM_COLORS)
    projected = unet.class_embedding.weight.detach().clone()
    assert is_additive(projected)
    additive_label_embedding(unet, NUM_CLASSES, NUM_COLORS)
    torch.testing.assert_close(unet.class_embedding.weight.detach(), projected)  # a projection: idempotent
    class_part, color_part = torch.randn(NUM_CLASSES + 1, 1, 5), torch.randn(1, NUM_COLORS + 1, 5)
    exact = (class_part + color_part).reshape(ROWS, 5)
    unet.class_embedding.weight.data = exact.clone()
    additive_label_embedding(unet, NUM_CLASSES, NUM_COLORS)
    torch.testing.assert_close(unet.class_embedding.weight.detach(), exact)  # a sum already is left alone


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--label_columns", "a,b,c"], "--label_columns takes one column name or two comma-separated"),
        (["--label_columns", "a,"], "--label_columns takes one column name or two comma-separated"),
        (["--label_columns", "label,color", "--streaming", "--no-colorize"], "two --label_columns need the in-memory"),
    ],
)
def test_bad_label_columns(argv, message):
    with pytest.raises(UserInputError, match=message):
        validate(parse_config(argv, conditional=True))


def test_label_column_is_still_accepted():
    assert parse_config(["--label_column", "digit"], conditional=True).label_column_names == ("digit",)


def test_evaluation_requests_both_labels_or_leaves_one_free():
    pipe = two_label_pipeline()
    digits, colors = requested_labels(pipe, 12, seed=0)
    assert digits.tolist() == [i % 10 for i in range(12)] and sorted(colors.tolist()) == sorted(
        [i % 6 for i in range(12)]
    )
    digits, colors = requested_labels(pipe, 12, seed=0, conditions="digit")
    assert (colors == FREE).all() and (digits >= 0).all()
    digits, colors = requested_labels(pipe, 12, seed=0, conditions="color")
    assert (digits == FREE).all() and (colors >= 0).all()
    with pytest.raises(UserInputError, match="conditions must be one of digit\\+color, digit, color"):
        requested_labels(pipe, 12, seed=0, conditions="shape")


def test_command_line_labels_cycle_and_name_each_image():
    pipe = two_label_pipeline()
    labels, colors = image_labels(pipe, None, [7], ["red", "any", 2])
    assert labels == [7, 7, 7] and colors == [0, FREE, 2]
    assert label_names(pipe, labels, colors) == ["red seven", "any seven", "blue seven"]
    labels, colors = image_labels(pipe, None, None, ["red"])
    assert labels == list(range(10)) and colors == [0] * 10  # every digit, in red
    with pytest.raises(UserInputError, match="Unknown color name 'mauve'"):
        image_labels(pipe, None, None, ["mauve"])


@pytest.fixture(scope="module")
def two_label_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("two") / "model"
    save_pipeline_folder(two_label_pipeline(), folder)
    return str(folder)


def command(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ddpm-zoo")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in (sample, visualize, evaluate):
        module.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def test_sample_writes_a_red_seven(two_label_folder, tmp_path):
    fast = ["--scheduler", "ddim", "--num_inference_steps", "2"]
    out = tmp_path / "samples"
    argv = [
        "--class_labels",
        "7,3",
        "--color_labels",
        "red,any",
        "--color_guidance_scale",
        "2",
        "--output_dir",
        str(out),
    ]
    assert command("sample", two_label_folder, *fast, *argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_red-seven.png", "00001_any-three.png", "grid.png"]
    with pytest.raises(UserInputError, match="Unknown color name 'purple'"):
        command("sample", two_label_folder, *fast, "--color_labels", "purple", "--output_dir", str(tmp_path / "x"))


def test_visualize_grid_is_a_digit_by_color_table(two_label_folder, tmp_path):
    out = tmp_path / "grid.png"
    assert command("visualize", two_label_folder, "--kind", "grid", "--scheduler", "ddim", "--num_inference_steps", "2",
                   "--scale", "1", "--output", str(out)) == 0  # fmt: skip
    one = Image.open(out)
    tile = out.parent / "one.png"
    command("visualize", two_label_folder, "--kind", "grid", "--scheduler", "ddim", "--num_inference_steps", "2",
            "--scale", "1", "--class_labels", "7", "--color_labels", "red", "--output", str(tile))  # fmt: skip
    single = Image.open(tile)
    # make_grid with 4 px padding: a lone tile is w + 8 wide; a table of 6 columns, 6 (w + 4) + 4
    tile_width = single.width - 8
    assert one.width == 6 * (tile_width + 4) + 4
    assert (one.height - 4) % 10 == 0 and (one.height - 4) // 10 - 4 >= tile_width  # 10 rows of captioned tiles


def test_evaluate_reports_every_request(two_label_folder, tmp_path):
    out = tmp_path / "results.json"
    argv = ["--num_samples", "12", "--batch_size", "12", "--steps", "2", "--no_extra_metrics", "--output", str(out)]
    assert command("evaluate", two_label_folder, "--model_kind", "digits", *argv) == 0
    rows = json.loads(out.read_text())["results"]
    assert [row["conditions"] for row in rows] == ["digit+color", "digit", "color"]
    assert [row["color_reference"] for row in rows] == ["requested", "palette", "requested"]
    assert "conditional_accuracy" in rows[0] and "conditional_accuracy" in rows[1]
    assert "conditional_accuracy" not in rows[2]
    assert command("evaluate", two_label_folder, "--model_kind", "digits", "--conditions", "color", *argv) == 0
    assert [row["conditions"] for row in json.loads(out.read_text())["results"]] == ["color"]


LOAD_AND_SAMPLE = (
    BLOCK_DDPM_ZOO
    + """
import json, torch
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler, UNet2DModel
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
unet = UNet2DModel.from_pretrained(sys.argv[1], subfolder="unet")
images = pipe(class_labels=["seven", 3], color_labels=["red", None], num_inference_steps=3, output_type="np").images
print(json.dumps({"class": type(pipe).__name__, "shape": list(images.shape), "rows": unet.config.num_class_embeds}))
"""
)


@pytest.mark.slow
def test_colored_digits_train_on_digit_and_color_and_load_with_plain_diffusers(tmp_path):
    config = write_tiny_unet_config(tmp_path / "config", channels=3)
    output = tmp_path / "run"
    result = launch("train_conditional.py", tiny_training_args(output, config, steps=3))
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((output / "model_index.json").read_text())
    assert index["color_names"] == ",".join(COLOR_NAMES) and index["class_names"] == ",".join(DIGIT_NAMES)
    record = json.loads((output / "ddpm_zoo_run.json").read_text())
    assert record["label_columns"] == "label,color" and record["color_names"] == list(COLOR_NAMES)
    assert 'color_labels=["red", None]' in (output / "README.md").read_text()
    published = UNet2DModel.from_pretrained(output, subfolder="unet")
    assert published.config.num_class_embeds == ROWS and is_additive(published.class_embedding.weight.detach())
    loaded = subprocess.run([sys.executable, "-c", LOAD_AND_SAMPLE, str(output)], capture_output=True, text=True,
                            timeout=120, cwd="/")  # fmt: skip
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    found = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert found == {"class": "ClassConditionalDDPMPipeline", "shape": [2, 8, 8, 3], "rows": ROWS}


@pytest.mark.slow
def test_any_dataset_with_two_label_columns(tmp_path):
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "shape": datasets.ClassLabel(names=["disc", "ring", "bar"]),
            "shade": datasets.ClassLabel(names=["light", "dark"]),
            "plain": datasets.Value("int64"),
        }
    )
    rows = {
        "image": [Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L") for _ in range(32)],
        "shape": [i % 3 for i in range(32)],
        "shade": [i % 2 for i in range(32)],
        "plain": [i % 2 for i in range(32)],
    }
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "data"))
    config = write_tiny_unet_config(tmp_path / "config", channels=1)
    base = {"train_data_dir": str(tmp_path / "data"), "preset": "mnist-tiny", "train_batch_size": "8"}
    result = launch(
        "train_conditional.py",
        tiny_training_args(tmp_path / "run", config, steps=2, label_columns="shape,shade", **base),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert (index["class_names"], index["color_names"]) == ("disc,ring,bar", "light,dark")
    unet = json.loads((tmp_path / "run" / "unet" / "config.json").read_text())
    assert unet["num_class_embeds"] == (3 + 1) * (2 + 1)
    refused = launch(
        "train_conditional.py",
        tiny_training_args(tmp_path / "bad", config, steps=2, label_columns="shape,plain", **base),
    )
    assert refused.returncode != 0
    assert "error: the second label column 'plain' needs class names: make it a ClassLabel column" in refused.stderr
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


@pytest.mark.slow
def test_a_two_label_run_resumes_bitwise_and_trains_on_two_processes(tmp_path):
    config = write_tiny_unet_config(tmp_path / "config", channels=3)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    result = launch("train_conditional.py", tiny_training_args(reference, config))
    assert result.returncode == 0, result.stderr[-3000:]
    resumed.mkdir()
    shutil.copytree(reference / "checkpoint-3", resumed / "checkpoint-3")
    shutil.copy(reference / "ddpm_zoo_run.json", resumed / "ddpm_zoo_run.json")
    result = launch("train_conditional.py", tiny_training_args(resumed, config, resume_from_checkpoint="latest"))
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("checkpoint-6/model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert (reference / name).read_bytes() == (resumed / name).read_bytes(), name
    two = tmp_path / "two-processes"
    result = launch("train_conditional.py", tiny_training_args(two, config, train_batch_size="8"), num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    published = UNet2DModel.from_pretrained(two, subfolder="unet")
    assert published.config.num_class_embeds == ROWS and is_additive(published.class_embedding.weight.detach())

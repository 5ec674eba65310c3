"""`ddpm-zoo sample` and `ddpm-zoo visualize` on saved test-sized pipeline folders."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_unet
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file

from ddpm_zoo import outputs
from ddpm_zoo.commands import sample, visualize
from ddpm_zoo.commands.sample import parse_class_labels
from ddpm_zoo.commands.visualize import parse_timesteps
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.generation import DEFAULT_STEPS, default_steps, generate
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.presets import DIGIT_NAMES
from ddpm_zoo.publish import save_pipeline_folder
from ddpm_zoo.visualize import forward_images

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """A class-conditional RGB digit model with class names and an unconditional grayscale one."""
    root = tmp_path_factory.mktemp("models")
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    conditional = ClassConditionalDDPMPipeline(
        unet=tiny_unet(3, 8, num_class_embeds=11), scheduler=scheduler, class_names=",".join(DIGIT_NAMES)
    )
    unconditional = UnconditionalDDPMPipeline(unet=tiny_unet(1, 8), scheduler=scheduler)
    guide = tiny_unet(1, 8)
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter.mul_(0.9)
    autoguided = UnconditionalDDPMPipeline(
        unet=tiny_unet(1, 8), scheduler=scheduler, guide_unet=guide, autoguidance_scale=3.0
    )
    for name, pipeline in (("conditional", conditional), ("unconditional", unconditional), ("autoguided", autoguided)):
        save_pipeline_folder(pipeline, root / name)
    return {name: str(root / name) for name in ("conditional", "unconditional", "autoguided")}


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="ddpm-zoo")
    subparsers = parser.add_subparsers(dest="command", required=True)
    sample.add_parser(subparsers)
    visualize.add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_sample_conditional_writes_named_pngs_and_a_grid(models, tmp_path):
    common = ["--num_images", "5", "--class_labels", "0,seven", "--scheduler", "ddim"]
    common += ["--num_inference_steps", "3", "--guidance_scale", "2", "--device", "cpu"]
    assert run("sample", models["conditional"], *common, "--batch_size", "2", "--output_dir", str(tmp_path / "a")) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["00000_zero.png", "00001_seven.png", "00002_zero.png", "00003_seven.png", "00004_zero.png"] + [
        "grid.png"
    ]
    with Image.open(tmp_path / "a" / "00001_seven.png") as image:
        assert image.size == (8, 8) and image.mode == "RGB"
    # Image i has its own seed: the batch size does not change it.
    run("sample", models["conditional"], *common, "--batch_size", "5", "--output_dir", str(tmp_path / "b"))
    for name in names[:-1]:
        assert np.array_equal(pixels(tmp_path / "a" / name), pixels(tmp_path / "b" / name))


def test_sample_unconditional_with_another_scheduler(models, tmp_path):
    out = tmp_path / "samples"
    argv = ["--num_images", "3", "--scheduler", "dpmsolver", "--num_inference_steps", "2", "--output_dir", str(out)]
    assert run("sample", models["unconditional"], *argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "00002.png", "grid.png"]
    with Image.open(out / "00000.png") as image:
        assert image.mode == "L"


def test_sample_autoguided_model_takes_a_guidance_scale(models, tmp_path):
    argv = ["--num_images", "2", "--scheduler", "ddim", "--num_inference_steps", "3", "--device", "cpu"]
    for scale in ("1", "3"):
        assert (
            run("sample", models["autoguided"], *argv, "--guidance_scale", scale, "--output_dir", str(tmp_path / scale))
            == 0
        )
    assert run("sample", models["autoguided"], *argv, "--output_dir", str(tmp_path / "default")) == 0
    default, explicit, unguided = (pixels(tmp_path / name / "00000.png") for name in ("default", "3", "1"))
    assert np.array_equal(default, explicit) and not np.array_equal(default, unguided)


@pytest.mark.parametrize(
    "model,options,message",
    [
        ("conditional", ["--class_labels", "0,12"], "outside this model's classes 0..9"),
        ("conditional", ["--class_labels", "eleven"], "Unknown class name 'eleven'"),
        ("conditional", ["--class_labels", "1,,2"], "empty entry"),
        ("conditional", ["--guidance_scale", "-1"], "guidance_scale must be >= 0"),
        ("conditional", ["--num_images", "0"], "num_images must be at least 1"),
        ("conditional", ["--batch_size", "0"], "batch_size must be at least 1"),
        ("conditional", ["--num_inference_steps", "0"], "num_inference_steps must be at least 1"),
        ("conditional", ["--num_inference_steps", "2000"], "num_inference_steps"),
        ("unconditional", ["--class_labels", "1"], "unconditional"),
        ("unconditional", ["--guidance_scale", "3"], "unconditional"),
    ],
)
def test_sample_rejects_bad_input(models, tmp_path, model, options, message):
    with pytest.raises(UserInputError, match=message):
        run("sample", models[model], "--num_inference_steps", "1", *options, "--output_dir", str(tmp_path))


def test_sample_rejects_missing_or_foreign_models(tmp_path):
    with pytest.raises(UserInputError, match="no such model folder"):
        run("sample", str(tmp_path / "a" / "b" / "c"))
    with pytest.raises(UserInputError, match="not a pipeline folder"):
        run("sample", str(tmp_path))
    with pytest.raises(SystemExit):
        run("sample", str(tmp_path), "--scheduler", "no-such-sampler")


def test_parse_class_labels():
    assert parse_class_labels("0, 1,seven") == [0, 1, "seven"]
    assert parse_class_labels(None) is None


def test_visualize_forward_strip_from_embedded_digits(models, tmp_path):
    out = tmp_path / "forward.png"
    assert (
        run("visualize", models["conditional"], "--kind", "forward", "--timesteps", "0,999", "--output", str(out)) == 0
    )
    with Image.open(out) as strip:
        array = np.asarray(strip.convert("RGB")).astype(int)
    assert (np.abs(array[..., 0] - array[..., 1]) > 60).any()  # tinted like colored-mnist, not gray
    images, names = forward_images(None, None, None, 3, 8, 1)
    assert images.shape == (3, 1, 8, 8) and names == ["zero", "one", "two"]
    assert -1 <= images.min() and images.max() <= 1 and images.max() > 0.5
    with pytest.raises(UserInputError, match="outside 0..999"):
        run("visualize", models["unconditional"], "--kind", "forward", "--timesteps", "0,1000")


def test_visualize_forward_strip_from_a_local_folder(models, tmp_path):
    for label, value in (("dark", 40), ("light", 220)):
        (tmp_path / "data" / label).mkdir(parents=True)
        Image.new("RGB", (12, 12), (value, value, 0)).save(tmp_path / "data" / label / "a.png")
    images, names = forward_images(None, str(tmp_path / "data"), None, 2, 8, 1)
    assert images.shape == (2, 1, 8, 8) and names == ["dark", "light"]
    out = tmp_path / "strip.png"
    run(
        "visualize",
        models["conditional"],
        "--kind",
        "forward",
        "--train_data_dir",
        str(tmp_path / "data"),
        "--output",
        str(out),
    )
    assert out.exists()


def test_visualize_reverse_grid_animation_and_labelled_grid(models, tmp_path):
    fast = ["--scheduler", "ddim", "--num_inference_steps", "4", "--scale", "2"]
    assert (
        run(
            "visualize",
            models["conditional"],
            "--kind",
            "reverse-grid",
            *fast,
            "--class_labels",
            "0,1",
            "--num_columns",
            "3",
            "--output",
            str(tmp_path / "r.png"),
        )
        == 0
    )
    out = tmp_path / "reverse.gif"
    run(
        "visualize",
        models["conditional"],
        "--kind",
        "animation",
        *fast,
        "--class_labels",
        "3",
        "--num_frames",
        "3",
        "--fps",
        "4",
        "--output",
        str(out),
    )
    with Image.open(out) as gif:
        assert gif.n_frames == 3 and gif.info["duration"] == 250
    run(
        "visualize",
        models["unconditional"],
        "--kind",
        "grid",
        *fast,
        "--num_images",
        "4",
        "--output",
        str(tmp_path / "g.png"),
    )
    with Image.open(tmp_path / "r.png") as grid, Image.open(tmp_path / "g.png") as samples:
        assert grid.mode == "RGB" and samples.size[0] > 2 * 8 * 2
    with pytest.raises(UserInputError, match="GIF"):
        run("visualize", models["conditional"], "--kind", "animation", "--output", str(tmp_path / "a.png"))


def test_the_ddpm_zoo_command_reports_bad_input_in_one_line(models, capsys):
    from ddpm_zoo.commands.main import main

    assert main(["sample", models["conditional"], "--class_labels", "3,eleven", "--num_inference_steps", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: Unknown class name 'eleven'")


def test_generate_works_with_plain_diffusers_pipelines():
    from diffusers import DDPMPipeline

    pipeline = DDPMPipeline(unet=tiny_unet(1, 8), scheduler=DDPMScheduler(num_train_timesteps=1000))
    images, seconds = generate(pipeline, num_images=3, num_inference_steps=2, batch_size=2, progress=False)
    assert images.shape == (3, 1, 8, 8) and images.dtype == torch.uint8 and seconds > 0
    # Image i depends on seed + i only: drawn alone from seed 1, image 1 comes out the same.
    alone, _ = generate(pipeline, num_images=2, num_inference_steps=2, seed=1, batch_size=1, progress=False)
    assert torch.equal(alone[0], images[1]) and torch.equal(alone[1], images[2])


def test_a_folder_with_only_pickle_weights_is_refused(models, tmp_path, capsys):
    from ddpm_zoo.commands.main import main

    folder = tmp_path / "pickled"
    shutil.copytree(models["unconditional"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    assert main(["sample", str(folder), "--num_images", "1", "--num_inference_steps", "1"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert (
        len(error) == 1
        and "only pickle weights (diffusion_pytorch_model.bin)" in error[0]
        and "safetensors" in error[0]
    )


MARKER_CODE = """
import pathlib
pathlib.Path({marker!r}).write_text("yes")
from diffusers import DDPMPipeline


class OwnPipeline(DDPMPipeline):
    pass
"""


def test_downloaded_code_runs_only_when_trusted(models, tmp_path, capsys):
    """A ddpm-zoo folder loads into the installed classes, never running its pipeline.py; another folder's
    custom code needs --trust_remote_code."""
    from ddpm_zoo.commands.main import main

    ours = tmp_path / "ours"
    shutil.copytree(models["unconditional"], ours)
    marker = tmp_path / "CODE_RAN"
    (ours / "pipeline.py").write_text(MARKER_CODE.format(marker=str(marker)))
    args = ["--num_images", "1", "--num_inference_steps", "1", "--output_dir"]
    assert main(["sample", str(ours), *args, str(tmp_path / "a")]) == 0
    assert not marker.exists()
    capsys.readouterr()

    theirs = tmp_path / "theirs"
    shutil.copytree(ours, theirs)
    index = json.loads((theirs / "model_index.json").read_text())
    index["_class_name"] = ["pipeline", "OwnPipeline"]
    (theirs / "model_index.json").write_text(json.dumps(index))
    assert main(["sample", str(theirs), *args, str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"error: {theirs} holds custom pipeline code (OwnPipeline); read it, then pass --trust_remote_code to run it"
    ]
    assert not marker.exists()
    assert main(["sample", str(theirs), *args, str(tmp_path / "c"), "--trust_remote_code"]) == 0
    assert marker.exists() and (tmp_path / "c" / "grid.png").exists()


def test_bad_output_paths_are_refused_before_the_model_is_loaded(tmp_path):
    """The model does not exist: were it loaded first, the error would say so."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder.png").mkdir()
    missing = str(tmp_path / "no" / "such" / "model")
    cases = [
        (["--kind", "grid", "--output", str(tmp_path / "noext")], "no image suffix"),
        (["--kind", "grid", "--output", str(tmp_path / "x.txt")], "no image suffix"),
        (["--kind", "forward", "--output", str(tmp_path / "afile" / "x.png")], "afile is a file"),
        (["--kind", "reverse-grid", "--output", str(tmp_path / "folder.png")], "is a folder"),
    ]
    if Path("/proc/self").is_dir():
        cases.append((["--kind", "forward", "--output", "/proc/forward.png"], "cannot write"))
    for options, message in cases:
        with pytest.raises(UserInputError, match=message):
            run("visualize", missing, *options)
    with pytest.raises(UserInputError, match="afile is a file"):
        run("sample", missing, "--output_dir", str(tmp_path / "afile"))


def test_a_failed_write_is_one_error_line(tmp_path):
    with pytest.raises(UserInputError, match="cannot write .*out.png: No space left on device"):
        with outputs.writing(tmp_path / "out.png"):
            raise OSError(28, "No space left on device")


@pytest.mark.parametrize("command", ["sample", "visualize"])
def test_seeds_torch_cannot_take_are_refused(models, command):
    extra = ["--kind", "grid"] if command == "visualize" else []
    with pytest.raises(UserInputError, match="--seed must be between 0 and"):
        run(command, models["unconditional"], *extra, "--seed", str(2**64))


@pytest.fixture(scope="module")
def short_schedule_model(tmp_path_factory) -> str:
    """An unconditional model trained with T = 400 timesteps (`--ddpm_num_steps 400`)."""
    folder = tmp_path_factory.mktemp("short") / "model"
    pipeline = UnconditionalDDPMPipeline(unet=tiny_unet(1, 8), scheduler=DDPMScheduler(num_train_timesteps=400))
    save_pipeline_folder(pipeline, folder)
    return str(folder)


def test_default_step_counts_are_capped_at_the_training_timesteps(short_schedule_model):
    pipeline = load_pipeline(short_schedule_model, "cpu")
    assert default_steps(pipeline) == 400  # DDPM's usual 1000, capped at T
    pipeline = load_pipeline(short_schedule_model, "cpu", scheduler="ddim")
    assert default_steps(pipeline) == DEFAULT_STEPS["ddim"] == 50
    pipeline.scheduler = DDPMScheduler.from_config(pipeline.scheduler.config, num_train_timesteps=20)
    assert default_steps(pipeline) == 20


def test_forward_strip_default_timesteps_scale_with_the_training_timesteps():
    assert parse_timesteps(None, 1000) == [0, 50, 100, 200, 300, 400, 600, 800, 999]
    assert parse_timesteps(None, 400) == [0, 20, 40, 80, 120, 160, 240, 320, 399]
    assert parse_timesteps(None, 1) == [0]


@pytest.mark.slow
def test_every_default_works_for_a_model_trained_with_400_timesteps(short_schedule_model, tmp_path):
    """DDPM's default 1000 steps become 400, the forward strip's timesteps end at 399 (about 15 s on a CPU)."""
    out = tmp_path / "samples"
    assert run("sample", short_schedule_model, "--num_images", "2", "--output_dir", str(out)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "grid.png"]
    for kind in ("forward", "reverse-grid", "grid"):
        picture = tmp_path / f"{kind}.png"
        argv = ["--kind", kind, "--num_images", "1", "--output", str(picture)]
        assert run("visualize", short_schedule_model, *argv) == 0
    scaled = tmp_path / "scaled.png"
    argv = ["--kind", "forward", "--num_images", "1", "--timesteps", "0,20,40,80,120,160,240,320,399"]
    assert run("visualize", short_schedule_model, *argv, "--output", str(scaled)) == 0
    assert np.array_equal(pixels(tmp_path / "forward.png"), pixels(scaled))


@pytest.mark.parametrize(
    "argv",
    [
        ["sample", "--num_inference_steps", "401"],
        ["sample", "--scheduler", "ddim", "--num_inference_steps", "401"],
        ["visualize", "--kind", "reverse-grid", "--num_inference_steps", "401"],
        ["visualize", "--kind", "grid", "--scheduler", "dpmsolver", "--num_inference_steps", "401"],
    ],
)
def test_more_steps_than_training_timesteps_is_one_clear_error(short_schedule_model, tmp_path, argv):
    command, *options = argv
    with pytest.raises(UserInputError) as error:
        run(command, short_schedule_model, *options, "--output" if command == "visualize" else "--output_dir",
            str(tmp_path / ("x.png" if command == "visualize" else "x")))  # fmt: skip
    assert str(error.value) == (
        "--num_inference_steps 401 is more than this model's 400 training timesteps; use at most 400"
    )

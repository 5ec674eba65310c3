"""The 2-D toy: seeded point generators, tables of points, the MLP, the point pipeline and the toy runs."""

import argparse
import json
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import BLOCK_DDPM_ZOO, launch
from diffusers import ConfigMixin, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, ModelMixin
from diffusers.configuration_utils import register_to_config
from hub_server import TEST_TOKEN, TEST_USER
from safetensors.torch import load_file

from ddpm_zoo import data as data_lib
from ddpm_zoo import point_pictures, points
from ddpm_zoo.cards import TrainingSummary, render_model_card
from ddpm_zoo.commands.main import main
from ddpm_zoo.commands.points import evaluate_points, visualize_points
from ddpm_zoo.commands.train import parse_config
from ddpm_zoo.errors import DataError, UserInputError
from ddpm_zoo.evaluation.points import describe_quality, mode_balance, nearest_modes, point_quality, sample_points
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.models import PointDenoiser, PointDenoiserOutput
from ddpm_zoo.pipelines import POINTS_SOURCE_FILE, PointDiffusionPipeline
from ddpm_zoo.publish import save_pipeline_folder
from ddpm_zoo.training import prepare_points

pytest_plugins = ["hub_server"]


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


class GaussianDenoiser(ModelMixin, ConfigMixin):
    """The exact noise prediction for data N(mean, diag(std^2)), with the point denoiser's interface:
    E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mean) / (abar std^2 + 1 - abar)."""

    @register_to_config
    def __init__(self, mean: tuple = (1.0, -0.5), std: tuple = (0.8, 0.5), in_channels: int = 2):
        super().__init__()
        self.register_buffer("alphas_cumprod", DDPMScheduler(clip_sample=False).alphas_cumprod.double())
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # ModelMixin wants a parameter for its dtype

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        alpha_bar = self.alphas_cumprod[torch.as_tensor(timestep).long()].reshape(-1, 1)
        mean, var = torch.tensor(self.config.mean).double(), torch.tensor(self.config.std).double() ** 2
        eps = (1 - alpha_bar).sqrt() * (sample.double() - alpha_bar.sqrt() * mean) / (alpha_bar * var + 1 - alpha_bar)
        return PointDenoiserOutput(sample=eps.to(sample.dtype))


def gaussian_pipeline() -> PointDiffusionPipeline:
    pipeline = PointDiffusionPipeline(denoiser=GaussianDenoiser(), scheduler=DDPMScheduler(clip_sample=False))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


# First-order DDIM shrinks the variance a little at 50 steps (about 7%, as in test_samplers_closed_form.py).
@pytest.mark.parametrize(
    "scheduler, steps, rtol",
    [(DDPMScheduler, 1000, 0.06), (DDIMScheduler, 50, 0.12), (DPMSolverMultistepScheduler, 25, 0.06)],
)
def test_closed_form_denoiser_reproduces_the_gaussian_under_any_scheduler(one_thread, scheduler, steps, rtol):
    """Swapped in the plain way (`from_config`), each scheduler turns the exact denoiser into samples of the data."""
    pipeline = gaussian_pipeline()
    pipeline.scheduler = scheduler.from_config(pipeline.scheduler.config)
    found = pipeline(batch_size=4000, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).points
    assert found.shape == (4000, 2) and found.dtype == np.float32
    np.testing.assert_allclose(found.mean(axis=0), [1.0, -0.5], atol=0.04)
    np.testing.assert_allclose(found.std(axis=0), [0.8, 0.5], rtol=rtol)


def test_point_pipeline_output_types_callback_and_guidance(one_thread):
    torch.manual_seed(0)
    denoiser = PointDenoiser(hidden_size=16, num_blocks=1, time_embedding_dim=8, num_class_embeds=3)
    pipeline = PointDiffusionPipeline(denoiser, DDIMScheduler(clip_sample=False), class_names="left,right")
    pipeline.set_progress_bar_config(disable=True)
    seen = []

    def callback(pipe, i, t, tensors):
        seen.append(tensors["latents"].shape)
        return tensors

    out = pipeline(
        class_labels=["left", 1, "RIGHT"], num_inference_steps=4, output_type="pt", callback_on_step_end=callback
    )
    assert isinstance(out.points, torch.Tensor) and out.points.shape == (3, 2)
    assert seen == [(3, 2)] * 4
    assert pipeline(class_labels=0, batch_size=5, num_inference_steps=2, return_dict=False)[0].shape == (5, 2)
    assert pipeline(batch_size=6, num_inference_steps=2).points.shape == (6, 2)  # the null class: unconditional
    with pytest.raises(ValueError, match="Unknown class name 'up'"):
        pipeline(class_labels="up", num_inference_steps=2)
    with pytest.raises(ValueError, match="'np' or 'pt'"):
        pipeline(batch_size=2, output_type="pil")


def test_point_denoiser_takes_what_a_unet_takes_and_learned_variance_doubles_the_output():
    model = PointDenoiser(out_channels=4, num_class_embeds=9)
    x = torch.randn(5, 2)
    assert model(x, 10, class_labels=torch.arange(5)).sample.shape == (5, 4)
    assert model(x, torch.tensor([1.5] * 5), class_labels=torch.arange(5), return_dict=False)[0].shape == (5, 4)
    with pytest.raises(ValueError, match="class_labels"):
        model(x, 3)


def test_energy_distance_of_the_data_sits_at_the_floor_and_a_shift_lifts_it():
    data = points.generate("swiss-roll", 1000, 5).points.numpy()
    at_floor = point_quality(data, "swiss-roll")
    assert at_floor.ratio < 2
    shifted = point_quality(data + 0.3, "swiss-roll")
    assert shifted.ratio > 5 and shifted.near_mode is None


def test_eight_gaussians_mode_share_balance_and_requested_mode_accuracy():
    found = points.generate("eight-gaussians", 2000, 5)
    quality = point_quality(found.points.numpy(), "eight-gaussians", requested=found.labels.numpy())
    # Within 3 sigma of a 2-D Gaussian's centre lies 1 - exp(-9 / 2) = 0.989 of its mass.
    assert quality.near_mode == pytest.approx(0.989, abs=0.006) and quality.mode_accuracy == quality.near_mode
    assert quality.mode_balance > 0.99
    one_mode = np.repeat(points.mode_centres()[:1], 100, axis=0)
    assert mode_balance(nearest_modes(one_mode)[0]) == pytest.approx(1 / 8)
    wrong = point_quality(found.points.numpy(), "eight-gaussians", requested=(found.labels.numpy() + 1) % 8)
    assert wrong.mode_accuracy < 0.01


def tiny_point_pipeline(out_channels: int = 2) -> PointDiffusionPipeline:
    torch.manual_seed(0)
    denoiser = PointDenoiser(out_channels=out_channels, hidden_size=16, num_blocks=1, time_embedding_dim=8)
    scheduler = DDPMScheduler(clip_sample=False, variance_type="learned_range" if out_channels == 4 else "fixed_small")
    pipeline = PointDiffusionPipeline(denoiser, scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_pictures_of_forward_and_reverse_process_field_and_learned_variance(one_thread):
    pipeline = tiny_point_pipeline(out_channels=4)
    data = points.generate("two-moons", 200).points.numpy()
    assert point_pictures.forward_strip(data, pipeline.scheduler, [0, 500, 999]).size[0] > 3 * 256
    frames = point_pictures.reverse_frames(pipeline, count=50, num_inference_steps=5)
    assert [t for t, _ in frames][:2] == [1000, 800] and len(frames) == 6
    assert all(found.shape == (50, 2) for _, found in frames)
    assert point_pictures.reverse_strip(frames).size[1] > 256
    assert point_pictures.reverse_gif(frames).startswith(b"GIF89a")
    assert point_pictures.vector_fields(pipeline, [10, 500], grid=5).size[0] > 2 * 256
    assert point_pictures.variance_chart(pipeline, data, points=5) is not None
    assert point_pictures.variance_chart(tiny_point_pipeline(), data) is None


def toy_args(output_dir, steps: int = 30, **overrides) -> list[str]:
    """A test-sized toy run: a few steps, a small batch, a few sampling steps, no tracker."""
    options = {
        "preset": "toy-2d",
        "output_dir": str(output_dir),
        "max_train_steps": str(steps),
        "train_batch_size": "64",
        "checkpointing_steps": str(steps),
        "save_images_steps": "1000",
        "num_sample_images": "64",
        "ddpm_num_inference_steps": "5",
        "lr_warmup_steps": "2",
        "logger": "none",
        **overrides,
    }
    return [item for key, value in options.items() for item in (f"--{key}", value)]


@pytest.mark.slow
def test_unconditional_toy_script_trains_and_plain_diffusers_loads_the_folder(tmp_path):
    output = tmp_path / "toy"
    run = launch("train_unconditional.py", toy_args(output, dataset_name="two-moons"))
    assert run.returncode == 0, run.stderr[-2000:]
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "PointDiffusionPipeline"] and index["denoiser"][0] == "models"
    assert (output / "denoiser" / "diffusion_pytorch_model.safetensors").is_file()
    assert (output / "samples" / "grid.png").is_file()
    script = BLOCK_DDPM_ZOO + (
        "import torch\n"
        "from diffusers import DiffusionPipeline, EulerDiscreteScheduler\n"
        f"pipe = DiffusionPipeline.from_pretrained({str(output)!r}, trust_remote_code=True)\n"
        "pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)\n"
        "points = pipe(batch_size=7, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).points\n"
        "print('POINTS', type(pipe).__name__, type(pipe.denoiser).__name__, points.shape)\n"
    )
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "POINTS PointDiffusionPipeline PointDenoiser (7, 2)" in loaded.stdout, loaded.stderr[-2000:]


@pytest.mark.slow
def test_conditional_toy_script_conditions_on_the_eight_gaussian_modes(tmp_path):
    output = tmp_path / "toy-cond"
    run = launch(
        "train_conditional.py", toy_args(output, dataset_name="eight-gaussians", variance_type="learned_range")
    )
    assert run.returncode == 0, run.stderr[-2000:]
    index = json.loads((output / "model_index.json").read_text())
    assert index["class_names"].split(",") == list(points.MODE_NAMES)
    config = json.loads((output / "denoiser" / "config.json").read_text())
    assert config["num_class_embeds"] == 9 and config["out_channels"] == 4


@pytest.mark.slow
def test_conditional_toy_needs_labelled_points(tmp_path):
    run = launch("train_conditional.py", toy_args(tmp_path / "out", dataset_name="swiss-roll"))
    assert run.returncode != 0  # accelerate launch reports the script's status 2 as its own failure
    assert "error: conditional training needs labelled points" in run.stderr


def test_point_samples_ask_each_mode_equally_and_the_line_names_every_statistic(one_thread):
    torch.manual_seed(0)
    denoiser = PointDenoiser(hidden_size=16, num_blocks=1, time_embedding_dim=8, num_class_embeds=9)
    pipeline = PointDiffusionPipeline(denoiser, DDIMScheduler(clip_sample=False))
    pipeline.set_progress_bar_config(disable=True)
    found, requested = sample_points(pipeline, 16, 2, 3.0, seed=0)
    assert found.shape == (16, 2) and requested.tolist() == list(range(8)) * 2
    line = describe_quality(point_quality(found, "eight-gaussians", requested=requested))
    assert "x the data floor" in line and "mode balance" in line and "in the requested mode" in line


def visualize_args(kind: str, model: str, **overrides) -> argparse.Namespace:
    values = {
        "kind": kind,
        "model": model,
        "num_images": 40,
        "class_labels": None,
        "guidance_scale": None,
        "timesteps": None,
        "dataset_name": None,
        "train_data_dir": None,
        "num_inference_steps": 4,
        "seed": 0,
        "num_frames": 10,
    }
    return argparse.Namespace(**{**values, **overrides})


@pytest.mark.parametrize("kind", ["forward", "vector-field", "grid", "reverse-grid", "variance", "animation"])
def test_every_picture_of_a_point_model(tmp_path, one_thread, kind):
    pipeline = tiny_point_pipeline(out_channels=4)
    output = tmp_path / "picture.gif"
    picture = visualize_points(pipeline, visualize_args(kind, str(tmp_path), timesteps="5,50"), output)
    if kind == "animation":
        assert picture is None and output.read_bytes().startswith(b"GIF89a")
    else:
        assert picture.width > 200


def test_variance_picture_of_a_fixed_variance_model_is_one_clear_error(tmp_path, one_thread):
    with pytest.raises(UserInputError, match="--variance_type learned_range"):
        visualize_points(tiny_point_pipeline(), visualize_args("variance", str(tmp_path)), tmp_path / "v.png")


def test_point_evaluation_sweeps_schedulers_and_writes_json(tmp_path, one_thread, capsys):
    pipeline = tiny_point_pipeline()
    args = argparse.Namespace(model=str(tmp_path), reference="two-moons", num_samples=50, seed=0)
    target = tmp_path / "eval_results.json"
    assert evaluate_points(pipeline, args, [None, "ddim"], [3], [None], target) == 0
    rows = json.loads(target.read_text())["rows"]
    assert [row["scheduler"] for row in rows] == ["own", "ddim"] and all(row["floor"] > 0 for row in rows)
    assert "x the data floor" in capsys.readouterr().out
    args.reference = None
    with pytest.raises(UserInputError, match="--reference swiss-roll"):
        evaluate_points(pipeline, args, [None], None, [None], target)


def test_installed_loader_builds_a_toy_folder_without_running_its_code(tmp_path):
    pipeline = tiny_point_pipeline()
    save_pipeline_folder(pipeline, tmp_path / "toy")
    index = json.loads((tmp_path / "toy" / "model_index.json").read_text())
    assert index["denoiser"] == ["models", "PointDenoiser"] and (tmp_path / "toy" / "denoiser" / "models.py").is_file()
    assert (tmp_path / "toy" / "pipeline.py").read_text() == POINTS_SOURCE_FILE.read_text()
    before = set(sys.modules)
    loaded = load_pipeline(str(tmp_path / "toy"), "cpu", "dpmsolver", torch_dtype=torch.float64)
    assert type(loaded.denoiser) is PointDenoiser and loaded.denoiser.dtype == torch.float64
    pairs = zip(pipeline.denoiser.parameters(), loaded.denoiser.parameters(), strict=True)
    assert all(torch.equal(saved.double(), found) for saved, found in pairs)
    assert not any(name.startswith("diffusers_modules") for name in set(sys.modules) - before)
    index["denoiser"] = ["models", "SomethingElse"]
    (tmp_path / "toy" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserInputError, match="component denoiser comes from models, not diffusers"):
        load_pipeline(str(tmp_path / "toy"), "cpu")


def test_visualize_and_evaluate_commands_on_a_toy_folder(tmp_path, one_thread, capsys):
    save_pipeline_folder(tiny_point_pipeline(out_channels=4), tmp_path / "toy")
    model = str(tmp_path / "toy")
    for kind in ("vector-field", "variance", "reverse-grid"):
        options = ["--num_images", "30", "--num_inference_steps", "3", "--output", str(tmp_path / f"{kind}.png")]
        assert main(["visualize", model, "--kind", kind, *options]) == 0
        assert (tmp_path / f"{kind}.png").stat().st_size > 1000
    evaluated = ["evaluate", model, "--reference", "checkerboard", "--num_samples", "40", "--steps", "3"]
    assert main(evaluated) == 0
    assert json.loads((tmp_path / "toy" / "eval_results.json").read_text())["reference"] == "checkerboard"
    assert main(["evaluate", model, "--num_samples", "40"]) == 2
    assert "error: point quality compares with a generated set" in capsys.readouterr().err


@pytest.mark.parametrize("conditional", [False, True])
def test_the_toy_card_shows_points_usage_and_the_generated_data(conditional):
    summary = TrainingSummary(
        preset="toy-2d",
        conditional=conditional,
        dataset="eight-gaussians" if conditional else "swiss-roll",
        resolution=None,
        max_train_steps=3000,
        total_batch_size=256,
        learning_rate=2e-3,
        mixed_precision="no",
        hardware="1 x CPU",
        wall_time_s=40.0,
        final_loss=0.3,
        class_names=points.MODE_NAMES if conditional else (),
    )
    text = render_model_card(summary, "me/toy").text
    snippet = text.split("```python\n")[1].split("```")[0]
    compile(snippet, "snippet", "exec")
    assert ".points" in snippet and ".images" not in text
    assert "plain diffusers as `PointDiffusionPipeline`" in text and "ddpm_zoo.loading.load_pipeline" in text
    assert "| Resolution | 2-D points |" in text and f"Trained on `{summary.dataset}`." in text


def test_sample_command_writes_points_a_toy_run_can_read_back(tmp_path, one_thread):
    torch.manual_seed(0)
    denoiser = PointDenoiser(hidden_size=16, num_blocks=1, time_embedding_dim=8, num_class_embeds=3)
    save_pipeline_folder(PointDiffusionPipeline(denoiser, DDPMScheduler(clip_sample=False), "a,b"), tmp_path / "toy")
    options = ["--num_images", "10", "--class_labels", "b", "--num_inference_steps", "3"]
    assert main(["sample", str(tmp_path / "toy"), *options, "--output_dir", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "grid.png").is_file()
    read = data_lib.load_point_data(None, str(tmp_path / "out" / "points.csv"), cache_dir=str(tmp_path / "cache"))
    assert read.images.shape == (10, 2) and read.labels.tolist() == [1] * 10


@pytest.mark.slow
def test_a_resumed_toy_run_publishes_the_weights_of_an_uninterrupted_one(tmp_path):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    assert launch("train_unconditional.py", toy_args(whole, steps=20, checkpointing_steps="10")).returncode == 0
    halves.mkdir()
    shutil.copytree(whole / "checkpoint-10", halves / "checkpoint-10")
    resumed = launch(
        "train_unconditional.py", toy_args(halves, steps=20, checkpointing_steps="10", resume_from_checkpoint="latest")
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    weights = "denoiser/diffusion_pytorch_model.safetensors"
    expected, found = load_file(str(whole / weights)), load_file(str(halves / weights))
    assert all(torch.equal(expected[name], found[name]) for name in expected)


@pytest.mark.parametrize(
    "options, conditional, message",
    [
        (["--autoguidance_scale", "2"], False, "self-guidance and autoguidance are for images"),
        (["--self_guidance_clusters", "4"], False, "self-guidance and autoguidance are for images"),
        (["--dataset_name", "checkerboard"], True, "conditional training needs labelled points"),
    ],
)
def test_toy_data_refuses_what_points_cannot_do(tmp_path, options, conditional, message):
    config = parse_config(["--preset", "toy-2d", "--output_dir", str(tmp_path), *options], conditional=conditional)
    with pytest.raises(UserInputError, match=message):
        prepare_points(config, Accelerator(cpu=True))


def test_toy_data_keeps_mode_labels_only_for_conditional_training(tmp_path):
    argv = ["--preset", "toy-2d", "--dataset_name", "eight-gaussians", "--output_dir", str(tmp_path)]
    conditional = prepare_points(parse_config(argv, conditional=True), Accelerator(cpu=True))
    assert conditional.class_names == points.MODE_NAMES and conditional.num_classes == 8
    unconditional = prepare_points(parse_config(argv), Accelerator(cpu=True))
    assert unconditional.num_classes == 0 and unconditional.batches.labels is None


@pytest.mark.slow
def test_a_toy_run_pushes_and_plain_diffusers_pulls_it_back(hub_server, tmp_path):
    repo_id = f"{TEST_USER}/toy"
    output = tmp_path / "toy"
    env = hub_server.client_env(tmp_path / "train-home", token=TEST_TOKEN, disable_xet=True)
    run = launch("train_unconditional.py", [*toy_args(output), "--push_to_hub", "--hub_model_id", repo_id], env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    repo = hub_server.repos[("model", repo_id)]
    uploaded = set(repo.resolve("main").files)
    assert {
        "model_index.json",
        "pipeline.py",
        "denoiser/models.py",
        "denoiser/diffusion_pytorch_model.safetensors",
    } <= (uploaded)
    assert {"README.md", "samples/grid.png"} <= uploaded
    shutil.rmtree(output)
    script = BLOCK_DDPM_ZOO + (
        "import torch\n"
        "from diffusers import DiffusionPipeline\n"
        f"pipe = DiffusionPipeline.from_pretrained({repo_id!r}, trust_remote_code=True)\n"
        "points = pipe(batch_size=5, num_inference_steps=3, generator=torch.Generator().manual_seed(0)).points\n"
        "print('PULLED', type(pipe).__name__, points.shape)\n"
    )
    pulled = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=hub_server.client_env(tmp_path / "pull-home"),
        cwd=tmp_path,
    )
    assert "PULLED PointDiffusionPipeline (5, 2)" in pulled.stdout, pulled.stderr[-2000:]

"""End-to-end runs of both training scripts under the real `accelerate launch` on CPU."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType
from conftest import BLOCK_DDPM_ZOO, REPO_ROOT, launch, tiny_training_args, write_tiny_unet_config
from PIL import Image
from safetensors.torch import load_file

from ddpm_zoo.training import step_seed

LOAD_AND_SAMPLE = (
    BLOCK_DDPM_ZOO
    + """
import json, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
kwargs = json.loads(sys.argv[2])
images = pipe(generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="np", **kwargs).images
print(json.dumps({"class": type(pipe).__name__, "shape": list(images.shape), "finite": bool(abs(images).max() < 2)}))
"""
)


def load_and_sample(folder, **kwargs) -> dict:
    """Load the folder with plain diffusers in a fresh process where ddpm_zoo cannot be imported."""
    result = subprocess.run(
        [sys.executable, "-c", LOAD_AND_SAMPLE, str(folder), json.dumps(kwargs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def unet_config(tmp_path_factory):
    return write_tiny_unet_config(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def unconditional_run(tmp_path_factory, unet_config):
    output = tmp_path_factory.mktemp("runs") / "uncond"
    result = launch("train_unconditional.py", tiny_training_args(output, unet_config))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.mark.slow
def test_unconditional_run_writes_a_publishable_folder(unconditional_run):
    index = json.loads((unconditional_run / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "UnconditionalDDPMPipeline"]
    assert (unconditional_run / "pipeline.py").read_bytes() == (
        REPO_ROOT / "pipelines" / "pipeline_ddpm_zoo.py"
    ).read_bytes()
    assert (unconditional_run / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert not list(unconditional_run.glob("unet/*.bin"))
    assert (unconditional_run / "samples" / "grid.png").exists()
    assert sorted(p.name for p in unconditional_run.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    summary = json.loads((unconditional_run / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["total_batch_size"] == 16
    assert summary["attention_kernel"] == "classic"  # --attention auto on a CPU
    # mnist-tiny self-guides: the UNet is conditioned on 50 k-means clusters of the 5,000 digits (+ the null one)
    assert summary["self_guidance"] == {"clusters": 50, "scale": 3.0} and summary["autoguidance"] is None
    assert len(index["cluster_sizes"]) == 50 and sum(index["cluster_sizes"]) == 5000 and min(index["cluster_sizes"]) > 0
    assert index["self_guidance_scale"] == 3.0 and index["guide_unet"] == [None, None]
    assert json.loads((unconditional_run / "unet" / "config.json").read_text())["num_class_embeds"] == 51
    record = json.loads((unconditional_run / "ddpm_zoo_run.json").read_text())
    assert record["cluster_sizes"] == index["cluster_sizes"]
    card = (unconditional_run / "README.md").read_text()
    assert "into 50 k-means clusters" in card and "self-guidance, w = 3, over 50 k-means clusters" in card
    # a test-sized network at 8 px is not mnist-tiny's: the card must not describe the preset's 28 px UNet
    assert "A DDPM trained with ddpm-zoo." in card and "28 -> 14 -> 7" not in card
    assert "| Published weights | EMA of training |" in card and "| Noise schedule | linear betas, 1000 steps |" in card


@pytest.mark.slow
def test_published_weights_are_the_ema_weights(unconditional_run):
    published = load_file(unconditional_run / "unet" / "diffusion_pytorch_model.safetensors")
    ema = load_file(unconditional_run / "checkpoint-6" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    raw = load_file(unconditional_run / "checkpoint-6" / "model.safetensors")
    assert all(torch.equal(published[name], ema[name]) for name in published)
    assert any(not torch.equal(published[name], raw[name]) for name in published)


@pytest.mark.slow
def test_unconditional_folder_loads_with_plain_diffusers(unconditional_run):
    result = load_and_sample(unconditional_run, batch_size=3)
    assert result == {"class": "UnconditionalDDPMPipeline", "shape": [3, 8, 8, 1], "finite": True}
    assert load_and_sample(unconditional_run, batch_size=2, guidance_scale=1.0)["shape"] == [2, 8, 8, 1]


@pytest.mark.slow
def test_guide_is_the_ema_at_the_guide_step_and_survives_checkpoints(tmp_path, unet_config):
    output = tmp_path / "guided"
    args = tiny_training_args(
        output,
        unet_config,
        steps=4,
        checkpointing_steps="1",
        checkpoints_total_limit="10",
        autoguidance_scale="2",
        autoguidance_guide_fraction="0.5",
        self_guidance_clusters="0",
    )
    result = launch("train_unconditional.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    weights = "diffusion_pytorch_model.safetensors"
    guide = load_file(output / "guide_unet" / weights)
    ema_at_2, ema_at_4 = (load_file(output / f"checkpoint-{n}" / "unet_ema" / weights) for n in (2, 4))
    assert all(torch.equal(guide[name], ema_at_2[name]) for name in guide)
    assert any(not torch.equal(guide[name], ema_at_4[name]) for name in guide)
    assert not (output / "checkpoint-1" / "unet_guide").exists()
    for step in (2, 3, 4):
        kept = load_file(output / f"checkpoint-{step}" / "unet_guide" / weights)
        assert all(torch.equal(guide[name], kept[name]) for name in guide)
    assert json.loads((output / "model_index.json").read_text())["autoguidance_scale"] == 2.0

    resumed = tmp_path / "resumed-guided"
    resumed.mkdir()
    shutil.copytree(output / "checkpoint-3", resumed / "checkpoint-3")
    args = tiny_training_args(resumed, unet_config, steps=4, autoguidance_scale="2", resume_from_checkpoint="latest")
    result = launch(
        "train_unconditional.py", args + ["--autoguidance_guide_fraction", "0.5", "--self_guidance_clusters", "0"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    again = load_file(resumed / "guide_unet" / weights)
    assert all(torch.equal(guide[name], again[name]) for name in guide)


@pytest.mark.slow
def test_no_guidance_when_both_are_off(tmp_path, unet_config):
    output = tmp_path / "plain"
    args = tiny_training_args(output, unet_config, steps=2, autoguidance_scale="1", self_guidance_clusters="0")
    result = launch("train_unconditional.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    index = json.loads((output / "model_index.json").read_text())
    # Nothing beyond diffusers' own DDPMPipeline is needed, so that is what is published: no guide, no code.
    assert index["_class_name"] == "DDPMPipeline" and set(index) >= {"unet", "scheduler"}
    assert "guide_unet" not in index and "cluster_sizes" not in index
    assert json.loads((output / "unet" / "config.json").read_text())["num_class_embeds"] is None
    assert not (output / "guide_unet").exists() and not (output / "pipeline.py").exists()
    assert json.loads((output / "training_summary.json").read_text())["autoguidance"] is None
    assert load_and_sample(output, batch_size=2) == {"class": "DDPMPipeline", "shape": [2, 8, 8, 1], "finite": True}


@pytest.mark.slow
def test_conditional_run_respects_class_labels(tmp_path, unet_config):
    output = tmp_path / "cond"
    args = tiny_training_args(output, unet_config, steps=3, preset="mnist-tiny")
    result = launch("train_conditional.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((output / "unet" / "config.json").read_text())
    assert config["num_class_embeds"] == 11
    index = json.loads((output / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ClassConditionalDDPMPipeline"]
    assert index["class_names"].split(",")[7] == "seven"
    assert "guide_unet" not in index and "cluster_sizes" not in index  # mnist-tiny's guidance is unconditional
    result = load_and_sample(output, class_labels=[0, "three", 7], guidance_scale=2.0)
    assert result == {"class": "ClassConditionalDDPMPipeline", "shape": [3, 8, 8, 1], "finite": True}


@pytest.mark.slow
def test_two_processes_train_and_save(tmp_path, unet_config, unconditional_run):
    """Two processes train one model; messages and the loss log come from the main process alone."""
    output = tmp_path / "ddp"
    missing = next(kind.value for kind in LoggerType if kind not in get_available_trackers() + [LoggerType.ALL])
    args = tiny_training_args(output, unet_config, steps=3, logger=missing)
    result = launch("train_unconditional.py", args, num_processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    warning = f"--logger {missing}: {missing} is not installed, so the loss goes to loss.csv only"
    assert result.stderr.count(warning) == 1
    assert (output / "loss.csv").read_text().splitlines()[0] == "step,loss,lr,ema_decay,wall_seconds"
    assert [line.split(",")[0] for line in (output / "loss.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    summary = json.loads((output / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["total_batch_size"] == 32
    sizes = json.loads((output / "model_index.json").read_text())["cluster_sizes"]
    assert sizes == json.loads((unconditional_run / "model_index.json").read_text())["cluster_sizes"]  # same k-means
    assert (output / "checkpoint-3" / "random_states_1.pkl").exists()
    assert load_and_sample(output, batch_size=2)["shape"] == [2, 8, 8, 1]


@pytest.mark.slow
def test_resume_continues_with_saved_optimizer_and_ema(tmp_path, unconditional_run, unet_config):
    output = tmp_path / "resumed"
    output.mkdir()
    shutil.copytree(unconditional_run / "checkpoint-3", output / "checkpoint-3")
    args = tiny_training_args(output, unet_config, resume_from_checkpoint="latest")
    result = launch("train_unconditional.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr and "at step 3" in result.stderr
    for name in ("model.safetensors", "unet_ema/diffusion_pytorch_model.safetensors"):
        expected = load_file(unconditional_run / "checkpoint-6" / name)
        actual = load_file(output / "checkpoint-6" / name)
        assert all(torch.equal(expected[key], actual[key]) for key in expected), name


COMPILER_CONFIG = """
import sys
from ddpm_zoo.commands.train import build_parser, parse_config
from ddpm_zoo.training import Trainer
trainer = Trainer(parse_config(sys.argv[1:], conditional=False))
print(trainer.model.get_compiler_config()["triton.cudagraphs"])
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode, cuda_graphs", [("default", "False"), ("reduce-overhead", "True")])
def test_compile_mode_reaches_torch_compile(tmp_path, mode, cuda_graphs):
    argv = tiny_training_args(tmp_path / "out", write_tiny_unet_config(tmp_path), compile_mode=mode) + ["--compile"]
    result = subprocess.run([sys.executable, "-c", COMPILER_CONFIG, *argv], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-1] == cuda_graphs


CUDNN_BENCHMARK = """
import sys, torch
from ddpm_zoo.commands.train import build_parser, parse_config
from ddpm_zoo.training import Trainer
Trainer(parse_config(sys.argv[1:], conditional=False))
print(torch.backends.cudnn.benchmark)
"""


@pytest.mark.slow
@pytest.mark.parametrize("flag, benchmark", [([], "True"), (["--no-cudnn_benchmark"], "False")])
def test_cudnn_benchmark_is_on_unless_turned_off(tmp_path, flag, benchmark):
    argv = tiny_training_args(tmp_path / "out", write_tiny_unet_config(tmp_path)) + flag
    result = subprocess.run([sys.executable, "-c", CUDNN_BENCHMARK, *argv], capture_output=True, text=True, check=True)
    assert result.stdout.split()[-1] == benchmark


def test_micro_batch_seeds_never_collide():
    """The seed of every (seed, step, micro-batch, process) is distinct, also with >= 11 accumulated micro-batches."""
    grid = [
        (seed, step, micro, process)
        for seed in (0, 1)
        for step in range(40)
        for micro in range(16)
        for process in range(8)
    ]
    assert len({step_seed(*key) for key in grid}) == len(grid)
    assert step_seed(0, 0, 10, 0) != step_seed(0, 1, 0, 1)
    assert step_seed(5, 3, 2, 1) == step_seed(5, 3, 2, 1)


def without_options(args: list[str], *names: str) -> list[str]:
    """`args` (options, each with its value unless it is a switch) without the named options."""
    kept, index = [], 0
    while index < len(args):
        width = 2 if index + 1 < len(args) and not args[index + 1].startswith("--") else 1
        if args[index][2:] not in names:
            kept += args[index : index + width]
        index += width
    return kept


@pytest.mark.slow
def test_num_epochs_and_save_images_epochs_count_epochs_of_the_data(tmp_path, unet_config):
    """--num_epochs without --max_train_steps trains that many epochs (the preset's step count does not apply),
    and --save_images_epochs saves a grid after every N epochs, as in diffusers' example."""
    data = tmp_path / "digits"
    data.mkdir()
    for i in range(20):
        Image.new("L", (8, 8), i * 12).save(data / f"{i}.png")
    output = tmp_path / "out"
    args = tiny_training_args(output, unet_config, train_batch_size="4", train_data_dir=str(data))
    args = without_options(args, "max_train_steps", "save_images_steps")
    args += ["--num_epochs", "2", "--save_images_epochs", "1", "--self_guidance_clusters", "0"]
    result = launch("train_unconditional.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((output / "training_summary.json").read_text())["global_step"] == 10  # 2 epochs of 5 batches
    assert sorted(p.name for p in (output / "progress").iterdir()) == ["step-0000005.png", "step-0000010.png"]

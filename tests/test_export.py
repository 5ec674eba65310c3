"""`ddpm-zoo export`: a checkpoint of a run becomes the pipeline folder the run would have published at that step;
training ends with a loss curve in its folder and card."""

import json
import shutil

import pytest
import torch
from conftest import launch, tiny_training_args, write_tiny_unet_config
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from ddpm_zoo.commands.main import main
from ddpm_zoo.data import COLOR_NAMES
from ddpm_zoo.evaluation.references import is_digit_model
from ddpm_zoo.export import read_checkpoint, rebuild_pipeline
from ddpm_zoo.loading import load_pipeline

pytestmark = pytest.mark.slow

UNET_WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A self-guided (mnist-tiny's default) run of 6 steps with checkpoints at steps 3 and 6."""
    root = tmp_path_factory.mktemp("export")
    output = root / "digits"
    result = launch("train_unconditional.py", tiny_training_args(output, write_tiny_unet_config(root)))
    assert result.returncode == 0, result.stderr[-3000:]
    return output


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-conditional")
    output = root / "colored"
    args = tiny_training_args(output, write_tiny_unet_config(root, channels=3), steps=3, checkpointing_steps="3")
    result = launch("train_conditional.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    return output


def export(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["export", *map(str, argv), "--device", "cpu"])
    out, err = capsys.readouterr()
    return code, out, err


def test_training_ends_with_a_loss_curve_in_the_folder_and_the_card(finished_run):
    with Image.open(finished_run / "loss.png") as curve:
        assert curve.format == "PNG" and curve.width > 100
    card = ModelCard.load(finished_run / "README.md")
    assert "![Training loss](loss.png)" in card.text
    assert [entry["output"]["url"] for entry in card.data.widget] == ["samples/grid.png", "loss.png"]


def test_the_last_checkpoint_exports_as_the_published_pipeline(finished_run, tmp_path, capsys):
    target = tmp_path / "exported"
    code, out, _ = export(capsys, finished_run / "checkpoint-6", "--output_dir", target)
    assert code == 0 and str(target) in out
    published, exported = load_file(finished_run / UNET_WEIGHTS), load_file(target / UNET_WEIGHTS)
    assert published.keys() == exported.keys()
    assert all(torch.equal(published[name], exported[name]) for name in published)  # the EMA weights
    index, run_index = (json.loads((folder / "model_index.json").read_text()) for folder in (target, finished_run))
    assert {k: v for k, v in index.items() if k != "_diffusers_version"} == {
        k: v for k, v in run_index.items() if k != "_diffusers_version"
    }
    scheduler, run_scheduler = (
        json.loads((f / "scheduler/scheduler_config.json").read_text()) for f in (target, finished_run)
    )
    assert scheduler == run_scheduler
    assert (target / "pipeline.py").read_bytes() == (finished_run / "pipeline.py").read_bytes()
    assert (target / "samples" / "grid.png").is_file() and (target / "loss.png").is_file()
    assert not list(target.glob("checkpoint-*")) and not (target / "ddpm_zoo_run.json").exists()
    card = (target / "README.md").read_text()
    assert "| Training steps | 6 |" in card and "| Published weights | EMA of training |" in card
    pipeline = load_pipeline(str(target), device="cpu")
    assert len(pipeline(batch_size=2, num_inference_steps=2, output_type="np").images) == 2


def test_an_earlier_checkpoint_exports_with_its_own_weights_and_loss_curve(finished_run, capsys):
    code, out, _ = export(capsys, finished_run / "checkpoint-3")
    target = finished_run.with_name(f"{finished_run.name}-checkpoint-3")  # the default: beside the run
    assert code == 0 and str(target) in out
    exported = load_file(target / UNET_WEIGHTS)
    ema = load_file(finished_run / "checkpoint-3" / "unet_ema" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(exported[name], ema[name]) for name in ema)
    summary = json.loads((target / "training_summary.json").read_text())
    assert summary["global_step"] == 3 and summary["card"]["max_train_steps"] == 3
    assert "| Training steps | 3 |" in (target / "README.md").read_text()
    assert export(capsys, finished_run / "checkpoint-3")[0] == 0  # an earlier export is replaced


def test_a_run_without_ema_exports_its_training_weights(finished_run, tmp_path, capsys):
    run = tmp_path / "no-ema"
    shutil.copytree(finished_run / "checkpoint-3", run / "checkpoint-3")
    record = json.loads((finished_run / "ddpm_zoo_run.json").read_text())
    (run / "ddpm_zoo_run.json").write_text(json.dumps({**record, "use_ema": False}))
    shutil.rmtree(run / "checkpoint-3" / "unet_ema")
    code, _, err = export(capsys, run / "checkpoint-3", "--output_dir", tmp_path / "out")
    assert code == 0, err
    raw = load_file(run / "checkpoint-3" / "model.safetensors")
    exported = load_file(tmp_path / "out" / UNET_WEIGHTS)
    assert all(torch.equal(exported[name], raw[name]) for name in raw)
    assert "| Published weights | final training weights (no EMA) |" in (tmp_path / "out" / "README.md").read_text()


def test_a_digit_and_color_checkpoint_rebuilds_as_a_digit_model(conditional_run):
    """benchmarks/time_to_quality.py scores checkpoints through this pipeline: it must take both labels, so that
    the digit metrics apply to it (without its color names it would read as a 76-class model)."""
    pipeline = rebuild_pipeline(read_checkpoint(conditional_run / "checkpoint-3"))
    assert pipeline.config.color_names == ",".join(COLOR_NAMES)
    assert pipeline.num_classes == 10
    assert is_digit_model(pipeline)


def test_a_conditional_checkpoint_keeps_its_class_and_color_names(conditional_run, tmp_path, capsys):
    code, _, err = export(capsys, conditional_run / "checkpoint-3", "--output_dir", tmp_path / "out")
    assert code == 0, err
    index = json.loads((tmp_path / "out" / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "ClassConditionalDDPMPipeline"]
    published = json.loads((conditional_run / "model_index.json").read_text())
    assert (index["class_names"], index["color_names"]) == (published["class_names"], published["color_names"])
    assert index["color_names"].split(",")[0] == "red"
    assert (tmp_path / "out" / "samples" / "grid.png").read_bytes() == (
        conditional_run / "samples" / "grid.png"
    ).read_bytes()
    pipeline = load_pipeline(str(tmp_path / "out"), device="cpu")
    assert len(pipeline(class_labels=["zero", 1], color_labels=["red", None], num_inference_steps=2).images) == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("not-a-checkpoint", "is not a checkpoint folder"),
        ("state", "is not a complete checkpoint: it has no training_state.json"),
        ("ema", "is not a complete checkpoint: diffusion_pytorch_model.safetensors is missing"),
        ("record", "cannot read the run record"),
    ],
)
def test_an_incomplete_checkpoint_is_one_error_line(finished_run, tmp_path, capsys, damage, message):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "checkpoint-3", run / "checkpoint-3")
    shutil.copy(finished_run / "ddpm_zoo_run.json", run / "ddpm_zoo_run.json")
    target = run / "checkpoint-3"
    if damage == "not-a-checkpoint":
        target = run
    elif damage == "state":
        (target / "training_state.json").unlink()
    elif damage == "ema":
        shutil.rmtree(target / "unet_ema")
    else:
        (run / "ddpm_zoo_run.json").unlink()
    code, _, err = export(capsys, target, "--output_dir", tmp_path / "out")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_folder_that_holds_other_files(finished_run, tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    code, _, err = export(capsys, finished_run / "checkpoint-6", "--output_dir", tmp_path)
    assert code == 2 and "is not empty" in err and sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]
    code, _, err = export(capsys, finished_run / "checkpoint-6", "--output_dir", finished_run)
    assert code == 2 and "is not empty" in err  # never over the run itself


def test_sampling_a_checkpoint_points_to_export(finished_run, tmp_path, capsys):
    code = main(["sample", str(finished_run / "checkpoint-3"), "--output_dir", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"ddpm-zoo export {finished_run / 'checkpoint-3'}" in err

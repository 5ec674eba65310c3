"""Evaluation: metric functions on controlled inputs, the shipped digit classifier, and `ddpm-zoo
evaluate` end to end on a test-sized random model (offline)."""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_unet
from diffusers import DDPMScheduler, ImagePipelineOutput
from huggingface_hub import ModelCardData
from PIL import Image
from safetensors.torch import save_file

from ddpm_zoo import evaluation as ev
from ddpm_zoo.commands import evaluate
from ddpm_zoo.data import COLOR_NAMES, color_indices, colorize, load_mnist_5k_arrays
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.evaluation import fidelity, references
from ddpm_zoo.generation import generate
from ddpm_zoo.introspection import default_guidance_scale, takes_guidance
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.presets import DIGIT_NAMES
from ddpm_zoo.publish import save_pipeline_folder

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("eval-cache"))


@pytest.fixture(autouse=True)
def eval_cache(shared_cache, monkeypatch) -> str:
    """Real-feature statistics go to a temporary cache, computed once for this module."""
    monkeypatch.setenv("DDPM_ZOO_CACHE", shared_cache)
    return shared_cache


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    arrays, labels = load_mnist_5k_arrays()
    return torch.from_numpy(arrays).unsqueeze(1), torch.from_numpy(labels).long()


@pytest.fixture(scope="module")
def held_out(digits) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = digits
    _, test = ev.classifier_split(labels)
    return images[test], labels[test]


def correlated_features(count: int = 4000, dim: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return torch.randn(count, dim, generator=generator, dtype=torch.float64) @ mixing


def test_frechet_distance_of_a_set_with_itself_is_zero():
    features = correlated_features()
    assert ev.frechet_distance_features(features, features) == pytest.approx(0.0, abs=1e-7)


def test_frechet_distance_grows_monotonically_with_a_shift():
    features = correlated_features()
    direction = torch.ones(features.shape[1], dtype=torch.float64) / features.shape[1] ** 0.5
    shifts = [0.0, 0.1, 0.3, 1.0, 3.0]
    distances = [ev.frechet_distance_features(features, features + s * direction) for s in shifts]
    assert all(a < b for a, b in zip(distances, distances[1:], strict=False))
    assert distances[-1] == pytest.approx(9.0, rel=1e-6)  # same covariance: FD = |shift|^2


def test_frechet_distance_matches_the_closed_form_for_isotropic_gaussians():
    dim = 8
    mu = torch.zeros(dim, dtype=torch.float64)
    a, b = 1.5, 0.5
    sigma_a, sigma_b = a**2 * torch.eye(dim, dtype=torch.float64), b**2 * torch.eye(dim, dtype=torch.float64)
    assert ev.frechet_distance(mu, sigma_a, mu, sigma_b) == pytest.approx(dim * (a - b) ** 2)


def test_classifier_weights_match_their_metadata():
    metadata = ev.classifier_metadata()
    path = ev.classifier_path()
    assert ev.file_sha256(path) == metadata["sha256"]
    assert path.stat().st_size < 400_000
    assert metadata["test_accuracy"] >= 0.97
    classifier = ev.load_digit_classifier()
    assert sum(p.numel() for p in classifier.parameters()) == metadata["parameters"]


def test_conditional_accuracy_of_held_out_digits_reaches_the_reported_test_accuracy(held_out):
    images, labels = held_out
    probabilities, features = ev.classify(images)
    accuracy = ev.conditional_accuracy(probabilities, labels)
    assert accuracy >= ev.classifier_metadata()["test_accuracy"] - 1e-12
    assert accuracy >= 0.97
    assert features.shape == (len(images), 128)


def test_real_digits_are_recognisable_also_in_color_and_at_other_sizes(held_out):
    images, labels = held_out
    probabilities, _ = ev.classify(images)
    assert ev.recognisability(probabilities) >= 0.9
    colored = colorize(images, torch.from_numpy(color_indices(len(images), seed=3)))
    colored_probabilities, _ = ev.classify(colored)
    assert torch.allclose(colored_probabilities, probabilities)
    larger = torch.nn.functional.interpolate(images.float() / 255, size=(56, 56), mode="bilinear")
    larger_probabilities, _ = ev.classify(larger)
    assert ev.conditional_accuracy(larger_probabilities, labels) >= 0.95


def test_noise_and_blobs_are_not_recognisable():
    generator = torch.Generator().manual_seed(0)
    noise = torch.rand(200, 1, 28, 28, generator=generator)
    blobs = torch.nn.functional.interpolate(torch.rand(200, 1, 6, 6, generator=generator), size=(28, 28))
    for images in (noise, ((blobs - 0.5) * 4).clamp(0, 1)):
        probabilities, _ = ev.classify(images)
        assert ev.recognisability(probabilities) < 0.05


def test_real_held_out_digits_are_close_to_the_reference_and_noise_is_far(held_out):
    context = ev.EvaluationContext(ev.digit_reference(), digits=True)
    reference_stats = context.digit_statistics()
    _, real = ev.classify(held_out[0])
    noise = torch.rand(len(held_out[0]), 1, 28, 28, generator=torch.Generator().manual_seed(0))
    _, fake = ev.classify(noise)
    fd_real = ev.frechet_distance(*ev.feature_statistics(real), *reference_stats)
    fd_noise = ev.frechet_distance(*ev.feature_statistics(fake), *reference_stats)
    assert fd_real * 20 < fd_noise


def test_reference_statistics_are_cached_by_dataset_and_classifier(eval_cache, digits, monkeypatch):
    def statistics(reference: ev.Reference) -> tuple[Path, tuple[torch.Tensor, torch.Tensor]]:
        """The statistics and the cache file they were written to (a new one)."""
        before = set(ev.cache_dir().glob("digit-features-*.safetensors"))
        stats = ev.reference_digit_statistics(reference)
        (new,) = set(ev.cache_dir().glob("digit-features-*.safetensors")) - before
        return new, stats

    reference = ev.Reference("a", "test", "a", digits[0][:64], key="first-64-digits")
    path, (mu, sigma) = statistics(reference)
    assert str(path).startswith(eval_cache)
    _, features = ev.classify(reference.images)
    torch.testing.assert_close((mu, sigma), ev.feature_statistics(features))
    # a second call reads the cache: what is planted there comes back
    planted = {"mu": torch.zeros_like(mu), "sigma": torch.eye(len(mu), dtype=mu.dtype)}
    save_file(planted, str(path))
    assert torch.equal(ev.reference_digit_statistics(reference)[0], planted["mu"])
    # other data (another content key) and another classifier (another sha256) get their own entries
    _, (other_mu, _) = statistics(dataclasses.replace(reference, key="other-digits"))
    assert torch.equal(other_mu, mu)
    metadata = {**ev.classifier_metadata(), "sha256": "0" * 64}
    monkeypatch.setattr(references, "classifier_metadata", lambda: metadata)
    statistics(reference)


def test_color_accuracy_of_colorizer_output_is_100_percent(digits):
    images = digits[0][:600]
    colors = torch.from_numpy(color_indices(len(images), seed=7))
    colored = colorize(images, colors)
    assert ev.color_accuracy(colored, colors) == 1.0
    assert ev.color_accuracy(colored) == 1.0
    assert ev.color_accuracy(colored, (colors + 1) % len(COLOR_NAMES)) == 0.0
    assert sum(ev.color_counts(colored).values()) == len(images)


def test_off_palette_colors_are_not_clean(digits):
    images = digits[0][:50].float() / 255
    orange = images * torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)
    assert ev.color_accuracy(orange) == 0.0


def tiny_unconditional() -> UnconditionalDDPMPipeline:
    return UnconditionalDDPMPipeline(unet=tiny_unet(channels=1, size=8), scheduler=DDPMScheduler())


def tiny_colored_conditional() -> ClassConditionalDDPMPipeline:
    unet = tiny_unet(channels=3, size=8, num_class_embeds=len(DIGIT_NAMES) + 1)
    return ClassConditionalDDPMPipeline(unet=unet, scheduler=DDPMScheduler(), class_names=",".join(DIGIT_NAMES))


def test_evaluate_pipeline_scores_an_unconditional_model(capsys):
    pipeline = tiny_unconditional()
    row = ev.evaluate_pipeline(
        pipeline, num_samples=6, batch_size=4, scheduler="ddim", num_inference_steps=2, digits=True, progress=False
    )
    assert row["scheduler"] == "ddim" and row["guidance_scale"] is None
    assert row["batch_size"] == 4  # recorded for the throughput; the samples do not depend on it
    assert ev.describe_setting(row) == "ddim, 2 steps, 6 samples in batches of 4, seed 0"
    assert 0 <= row["recognisability"] <= 1 and row["fd_digits"] > 0 and row["samples_per_second"] > 0
    assert "conditional_accuracy" not in row and "color_accuracy" not in row
    assert sum(row["digit_counts"]) == 6
    assert type(pipeline.scheduler) is DDPMScheduler  # the pipeline's own scheduler is restored
    out = capsys.readouterr().out
    if fidelity.inception_unavailable():
        assert "FID/KID skipped" in out


def evaluate_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ddpm-zoo")
    evaluate.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["evaluate", *argv])


def test_cli_sweeps_a_colored_conditional_model_and_writes_json(tmp_path, capsys):
    folder = save_pipeline_folder(tiny_colored_conditional(), tmp_path / "model")
    args = evaluate_args(
        str(folder), "--num_samples", "10", "--batch_size", "10", "--scheduler", "ddim,dpmsolver",
        "--steps", "2", "--guidance", "0,3", "--device", "cpu",
    )  # fmt: skip
    assert args.func(args) == 0
    document = json.loads((folder / ev.RESULTS_FILE).read_text())
    rows = document["results"]
    assert [(r["scheduler"], r["guidance_scale"]) for r in rows] == [
        ("ddim", 0.0), ("ddim", 3.0), ("dpmsolver", 0.0), ("dpmsolver", 3.0)
    ]  # fmt: skip
    expected = {"conditional_accuracy", "recognisability", "fd_digits", "color_accuracy", "samples_per_second"}
    assert all(expected <= row.keys() for row in rows)
    assert document["reference"]["name"] == "mnist-5k"
    assert document["digit_classifier"]["sha256"] == ev.classifier_metadata()["sha256"]
    table = capsys.readouterr().out
    assert "cond. acc." in table and "color acc." in table and "dpmsolver" in table

    results = ev.eval_results_for_card(document)
    assert {r.metric_type for r in results} >= {"conditional_accuracy", "fd_digits", "color_accuracy"}
    card = ModelCardData(model_name="tiny", eval_results=results).to_dict()
    assert card["model-index"][0]["results"][0]["task"]["type"] == "unconditional-image-generation"


def test_cli_writes_to_the_output_path(tmp_path):
    folder = save_pipeline_folder(tiny_unconditional(), tmp_path / "model")
    target = tmp_path / "elsewhere" / "scores.json"
    args = evaluate_args(
        str(folder), "--num_samples", "4", "--steps", "1", "--model_kind", "digits", "--output", str(target),
        "--no_extra_metrics", "--device", "cpu",
    )  # fmt: skip
    assert args.func(args) == 0
    assert json.loads(target.read_text())["results"][0]["num_samples"] == 4
    assert not (folder / ev.RESULTS_FILE).exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "ten"], "--steps"),
        (["--guidance", "-1"], "--guidance"),
        (["--scheduler", "magic"], "--scheduler"),
        (["--num_samples", "1"], "--num_samples"),
        (["--seed", str(2**64)], "--seed"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_cli_rejects_bad_options(tmp_path, argv, message):
    args = evaluate_args(str(tmp_path), *argv)
    with pytest.raises(UserInputError, match=message):
        args.func(args)


def test_cli_rejects_a_folder_that_is_not_a_model(tmp_path):
    args = evaluate_args(str(tmp_path))
    with pytest.raises(UserInputError, match="model_index.json"):
        args.func(args)


def test_guidance_is_refused_for_an_unconditional_model(tmp_path):
    folder = save_pipeline_folder(tiny_unconditional(), tmp_path / "model")
    args = evaluate_args(str(folder), "--guidance", "1,3", "--device", "cpu")
    with pytest.raises(UserInputError, match="class-conditional"):
        args.func(args)


def test_autoguided_model_sweeps_guidance_and_defaults_to_its_saved_scale():
    guide = tiny_unet(channels=1, size=8)
    with torch.no_grad():
        for parameter in guide.parameters():
            parameter.mul_(0.9)
    pipeline = UnconditionalDDPMPipeline(
        unet=tiny_unet(channels=1, size=8), scheduler=DDPMScheduler(), guide_unet=guide, autoguidance_scale=2.5
    )
    assert takes_guidance(pipeline) and default_guidance_scale(pipeline) == 2.5
    assert not takes_guidance(tiny_unconditional()) and default_guidance_scale(tiny_unconditional()) is None
    context = ev.make_context(pipeline, digits=True, extra=False)
    rows = ev.sweep(
        pipeline, ["ddim"], [2], [None, 1.0, 4.0], num_samples=4, batch_size=4, progress=False, context=context
    )
    assert [row["guidance_scale"] for row in rows] == [2.5, 1.0, 4.0]
    assert rows[0]["fd_digits"] != rows[1]["fd_digits"]
    # a model card reports the row at the default guidance, wherever it is in the sweep
    assert ev.card_row(rows[1:] + rows[:1], 2.5) == 2 and ev.card_row(rows[1:], 2.5) == 0


def test_digit_models_are_recognised_by_size_or_class_names():
    assert ev.is_digit_model(UnconditionalDDPMPipeline(unet=tiny_unet(size=28), scheduler=DDPMScheduler()))
    assert not ev.is_digit_model(tiny_unconditional())
    assert ev.is_digit_model(tiny_colored_conditional())


def test_non_digit_model_needs_a_reference():
    pipeline = UnconditionalDDPMPipeline(unet=tiny_unet(channels=3, size=8), scheduler=DDPMScheduler())
    with pytest.raises(UserInputError, match="--reference"):
        ev.make_context(pipeline)


def trained_folder(path: Path) -> Path:
    """A saved colored conditional model with the model card and training_summary.json training writes."""
    from ddpm_zoo.cards import TrainingSummary, render_model_card

    folder = save_pipeline_folder(tiny_colored_conditional(), path)
    card_summary = TrainingSummary(
        preset="colored-mnist", conditional=True, dataset="mnist-5k", resolution=8, max_train_steps=3,
        total_batch_size=16, learning_rate=1e-3, mixed_precision="no", hardware="1 x CPU", wall_time_s=1.0,
        final_loss=0.5, class_names=DIGIT_NAMES,
    )  # fmt: skip
    (folder / "README.md").write_text(str(render_model_card(card_summary)))
    (folder / "training_summary.json").write_text(json.dumps({"card": dataclasses.asdict(card_summary)}))
    return folder


def test_evaluating_a_trained_folder_puts_the_results_into_its_model_card(tmp_path):
    from huggingface_hub import ModelCard

    folder = trained_folder(tmp_path / "model")
    assert "model-index" not in ModelCard.load(folder / "README.md").data.to_dict()
    argv = ["--num_samples", "4", "--steps", "1", "--guidance", "1,3", "--no_extra_metrics", "--device", "cpu"]
    args = evaluate_args(str(folder), *argv)
    assert args.func(args) == 0
    index = ModelCard.load(folder / "README.md").data.to_dict()["model-index"]
    metrics = {m["type"]: m for m in index[0]["results"][0]["metrics"]}
    document = json.loads((folder / ev.RESULTS_FILE).read_text())
    # the card reports the row at the pipeline's default guidance (3), not the sweep's first row
    expected = round(document["results"][1]["conditional_accuracy"], 4)
    assert metrics["conditional_accuracy"]["value"] == expected
    assert "guidance 3" in metrics["conditional_accuracy"]["config"]


def test_evaluate_pipeline_defaults_to_the_protocol_sampler():
    """Protocol v1 samples with DPM-Solver++; the saved DDPM scheduler at 25 steps would be far from it."""
    row = ev.evaluate_pipeline(tiny_unconditional(), num_samples=2, batch_size=2, digits=True, progress=False)
    assert row["scheduler"] == "dpmsolver" and row["num_inference_steps"] == 25


def test_a_local_reference_folder_is_named_without_its_path(tmp_path):
    """The reference's names go into the public model card's model-index: no local path may leak."""
    folder = tmp_path / "private" / "my-digits"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    reference = ev.dataset_reference(str(folder), resolution=8, channels=1)
    assert (reference.name, reference.dataset_type, reference.dataset_name) == (
        "my-digits",
        "local-folder",
        "my-digits",
    )
    assert reference.images.shape == (3, 1, 8, 8) and reference.images.dtype == torch.uint8


FAST = ["--num_samples", "4", "--steps", "1", "--no_extra_metrics", "--device", "cpu"]


def test_results_written_elsewhere_leave_the_model_card_alone(tmp_path, capsys):
    folder = trained_folder(tmp_path / "model")
    card = (folder / "README.md").read_bytes()
    args = evaluate_args(str(folder), *FAST, "--output", str(tmp_path / "other.json"))
    assert args.func(args) == 0
    assert (tmp_path / "other.json").exists() and (folder / "README.md").read_bytes() == card
    assert "model card left alone" in capsys.readouterr().out


def test_a_row_without_metrics_leaves_the_model_card_alone(tmp_path):
    folder = trained_folder(tmp_path / "model")
    card = (folder / "README.md").read_bytes()
    document = {"results": [{"scheduler": "dpmsolver", "num_samples": 4, "samples_per_second": 9.0}]}
    ev.update_model_card(folder, document, 0, folder / ev.RESULTS_FILE)
    assert (folder / "README.md").read_bytes() == card


@pytest.mark.parametrize("summary", ["not json", json.dumps({"card": {"preset": "colored-mnist"}})])
def test_an_unusable_training_summary_is_a_warning_and_the_results_stay(tmp_path, capsys, summary):
    folder = trained_folder(tmp_path / "model")
    (folder / "training_summary.json").write_text(summary)
    card = (folder / "README.md").read_bytes()
    args = evaluate_args(str(folder), *FAST)
    assert args.func(args) == 0
    assert json.loads((folder / ev.RESULTS_FILE).read_text())["results"][0]["num_samples"] == 4
    assert (folder / "README.md").read_bytes() == card
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "training_summary" in line]
    assert warning.startswith("warning: model card left alone")


def test_bad_output_paths_are_refused_before_the_model_is_loaded(tmp_path):
    """The model argument is no model: were it loaded first, the error would be about model_index.json."""
    (tmp_path / "afile").write_text("")
    (tmp_path / "folder.json").mkdir()
    cases = [(str(tmp_path / "afile") + "/", "is a file"), (str(tmp_path / "folder.json"), "is a folder")]
    if Path("/proc/self").is_dir():
        cases.append(("/proc/scores.json", "cannot write"))
    for output, message in cases:
        args = evaluate_args(str(tmp_path), "--output", output)
        with pytest.raises(UserInputError, match=message):
            args.func(args)


def test_step_counts_a_sampler_refuses_fail_before_any_sampling(tmp_path):
    folder = save_pipeline_folder(tiny_unconditional(), tmp_path / "model")
    args = evaluate_args(
        str(folder), *FAST, "--model_kind", "digits", "--scheduler", "dpmsolver,ddpm", "--steps", "1,1001"
    )
    with pytest.raises(UserInputError, match="--steps 1001 is more than this model's 1000 training timesteps"):
        args.func(args)
    assert not (folder / ev.RESULTS_FILE).exists()
    with pytest.raises(UserInputError, match="1001 is more than this model's 1000"):
        ev.evaluate_pipeline(tiny_unconditional(), 2, 2, "ddpm", 1001, digits=True, extra=False, progress=False)


def test_sweep_defaults_to_the_protocol_sampler():
    pipeline = tiny_unconditional()
    context = ev.make_context(pipeline, digits=True, extra=False)
    (row,) = ev.sweep(pipeline, steps=[1], num_samples=2, batch_size=2, context=context, progress=False)
    assert row["scheduler"] == "dpmsolver"


def test_a_non_digit_model_without_any_usable_metric_is_refused(monkeypatch):
    monkeypatch.setattr(references, "inception_unavailable", lambda: "FID/KID skipped: no torchmetrics here")
    monkeypatch.setattr(references, "load_dinov2", lambda device: (None, "FD-DINOv2 skipped: no transformers here"))
    pipeline = UnconditionalDDPMPipeline(unet=tiny_unet(channels=3, size=8), scheduler=DDPMScheduler())
    reference = ev.Reference("noise", "test", "noise", torch.zeros(4, 3, 8, 8, dtype=torch.uint8), key="zeros")
    with pytest.raises(UserInputError, match="torchmetrics.*DINOv2"):
        ev.make_context(pipeline, reference=reference)
    with pytest.raises(UserInputError, match="--no_extra_metrics"):
        ev.make_context(pipeline, reference=reference, extra=False)


def test_a_one_image_reference_is_refused_and_nothing_is_cached(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "0.png")
    before = sorted(ev.cache_dir().glob("*"))
    with pytest.raises(UserInputError, match="at least 2"):
        ev.make_context(tiny_unconditional(), digits=True, reference=str(folder))
    assert sorted(ev.cache_dir().glob("*")) == before


def test_results_are_strict_json(tmp_path):
    with pytest.raises(ValueError):
        ev.write_results({"results": [{"fd_digits": float("nan")}]}, tmp_path / "r.json")
    assert not list(tmp_path.iterdir())


def test_a_missing_reference_folder_is_named_as_such():
    with pytest.raises(UserInputError, match="no such reference folder"):
        ev.dataset_reference("/no/such/folder", resolution=8, channels=1)


class FakeMetric:
    """What InceptionMetrics uses of torchmetrics' FID and KID; `compute` draws from torch's global
    generator, as KernelInceptionDistance.compute draws its subsets."""

    subset_size = None

    def reset(self) -> None:
        pass

    def update(self, images: torch.Tensor, real: bool) -> None:
        pass

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        draw = torch.rand(())
        return draw, draw


def test_kid_subsets_are_seeded_and_the_global_generator_is_left_alone():
    metrics = object.__new__(fidelity.InceptionMetrics)  # no torchmetrics here: stand-ins for its metrics
    metrics.fid, metrics.kid, metrics.device, metrics.batch_size, metrics.num_real = (
        FakeMetric(), FakeMetric(), "cpu", 2, 4
    )  # fmt: skip
    metrics.fid.compute = lambda: torch.tensor(1.0)
    images = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    torch.manual_seed(1)
    first = metrics(images)["kid"]
    following = torch.rand(())
    torch.manual_seed(2)
    assert metrics(images)["kid"] == first
    torch.manual_seed(1)
    assert torch.rand(()) == following  # the caller's random stream is as if KID had drawn nothing


def classifier_script():
    """scripts/train_digit_classifier.py as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_digit_classifier.py"
    spec = importlib.util.spec_from_file_location("train_digit_classifier", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def script(monkeypatch):
    """The classifier script with its global torch settings and slow reference values stubbed out."""
    module = classifier_script()
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)
    monkeypatch.setattr(torch, "use_deterministic_algorithms", lambda mode: None)
    for name in ("real_reference_values", "outlier_recognisability", "degraded_reference_values"):
        monkeypatch.setattr(module, name, lambda *args: {})
    return module


def test_a_classifier_below_the_bar_writes_nothing(script, tmp_path, monkeypatch):
    (tmp_path / "digit_classifier.safetensors").write_bytes(b"shipped weights")
    (tmp_path / "digit_classifier.json").write_text("{}")
    monkeypatch.setattr(script, "train", lambda *args: ev.DigitClassifier().eval())  # untrained: ~10 %
    monkeypatch.setattr("sys.argv", ["train_digit_classifier.py", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match="below 0.97"):
        script.main()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digit_classifier.json", "digit_classifier.safetensors"]
    assert (tmp_path / "digit_classifier.safetensors").read_bytes() == b"shipped weights"


def test_a_classifier_that_passes_is_written_with_its_metadata(script, tmp_path, monkeypatch):
    monkeypatch.setattr(script, "train", lambda *args: ev.load_digit_classifier())
    monkeypatch.setattr("sys.argv", ["train_digit_classifier.py", "--output_dir", str(tmp_path / "out")])
    script.main()
    metadata = json.loads((tmp_path / "out" / "digit_classifier.json").read_text())
    assert metadata["sha256"] == ev.classifier_metadata()["sha256"]
    assert metadata["test_accuracy"] == ev.classifier_metadata()["test_accuracy"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "digit_classifier.json", "digit_classifier.safetensors"
    ]  # fmt: skip


class DigitAndColorPipeline(ClassConditionalDDPMPipeline):
    """A stand-in for a trained model conditioned on digit and color: it returns a real digit of each
    requested class in the requested color, and needs both."""

    def __call__(self, class_labels, color_labels, guidance_scale=3.0, generator=None, output_type="np", **kwargs):
        arrays, labels = load_mnist_5k_arrays()
        first = [int(np.flatnonzero(labels == digit)[-1]) for digit in class_labels]  # held-out digits
        images = colorize(torch.from_numpy(arrays[first]).unsqueeze(1), torch.tensor(color_labels))
        return ImagePipelineOutput(images=self.postprocess(images.float() / 127.5 - 1, output_type))


def test_a_model_that_takes_colors_is_scored_against_the_requested_colors():
    unet = tiny_unet(channels=3, size=8, num_class_embeds=(len(DIGIT_NAMES) + 1) * (len(COLOR_NAMES) + 1))
    names = {"class_names": ",".join(DIGIT_NAMES), "color_names": ",".join(COLOR_NAMES)}
    pipeline = DigitAndColorPipeline(unet=unet, scheduler=DDPMScheduler(), **names)
    row = ev.evaluate_pipeline(pipeline, 12, 5, None, 1, digits=True, extra=False, progress=False)
    assert row["color_reference"] == "requested" and row["color_accuracy"] == 1.0
    assert row["conditional_accuracy"] == 1.0
    assert row["color_counts"] == {**dict.fromkeys(COLOR_NAMES, 2), "none": 0}  # balanced over the palette


def test_generate_leaves_the_callers_progress_bar_setting_alone():
    pipeline = tiny_unconditional()
    pipeline.set_progress_bar_config(leave=False)
    images, _ = generate(pipeline, num_images=2, batch_size=2, num_inference_steps=1, seed=0, progress=False)
    assert images.shape[0] == 2 and pipeline._progress_bar_config == {"leave": False}


def test_evaluation_samples_do_not_depend_on_the_batch_size():
    """Image i is drawn from seed + i, so only the throughput changes with the batch size."""
    rows = [
        ev.evaluate_pipeline(tiny_unconditional(), 5, batch, "ddim", 2, digits=True, extra=False, progress=False)
        for batch in (5, 2)
    ]
    assert rows[0]["digit_counts"] == rows[1]["digit_counts"]
    assert rows[0]["fd_digits"] == rows[1]["fd_digits"] and rows[0]["recognisability"] == rows[1]["recognisability"]


def test_evaluate_defaults_work_for_a_model_trained_with_400_timesteps(tmp_path):
    pipeline = UnconditionalDDPMPipeline(
        unet=tiny_unet(channels=1, size=8), scheduler=DDPMScheduler(num_train_timesteps=400)
    )
    folder = save_pipeline_folder(pipeline, tmp_path / "model")
    args = evaluate_args(str(folder), "--num_samples", "2", "--model_kind", "digits", "--no_extra_metrics")
    assert args.func(args) == 0
    (row,) = json.loads((folder / ev.RESULTS_FILE).read_text())["results"]
    assert (row["scheduler"], row["num_inference_steps"]) == ("dpmsolver", 25)
    args = evaluate_args(str(folder), *FAST, "--model_kind", "digits", "--steps", "25,401")
    with pytest.raises(UserInputError) as error:
        args.func(args)
    assert str(error.value) == "--steps 401 is more than this model's 400 training timesteps; use at most 400"


def test_the_protocol_step_count_is_capped_at_the_training_timesteps():
    pipeline = UnconditionalDDPMPipeline(
        unet=tiny_unet(channels=1, size=8), scheduler=DDPMScheduler(num_train_timesteps=20)
    )
    assert ev.protocol_steps(pipeline) == 20 and ev.protocol_steps(tiny_unconditional()) == ev.PROTOCOL_STEPS == 25
    row = ev.evaluate_pipeline(pipeline, num_samples=2, digits=True, extra=False, progress=False)
    assert (row["scheduler"], row["num_inference_steps"]) == ("dpmsolver", 20)
    with pytest.raises(UserInputError, match="num_samples must be >= 2, batch_size and num_inference_steps >= 1"):
        ev.evaluate_pipeline(pipeline, num_samples=2, num_inference_steps=0, digits=True, extra=False, progress=False)

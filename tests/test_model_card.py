"""Model cards: Hub metadata that round-trips through YAML, and a body with the sections the Hub page needs."""

import dataclasses
import re
from importlib import resources

import pytest
from huggingface_hub import EvalResult, ModelCard
from huggingface_hub.utils import get_session

import ddpm_zoo.evaluation as ev
from ddpm_zoo.cards import BASE_CARD_TEMPLATE, GENERIC_CARD_TEMPLATE, TrainingSummary, card_template, render_model_card
from ddpm_zoo.evaluation.report import eval_results_for_card
from ddpm_zoo.presets import PRESETS

pytest_plugins = ["hub_server"]

SUMMARY = TrainingSummary(
    preset="mnist-tiny",
    conditional=False,
    dataset="mnist-5k",
    resolution=28,
    max_train_steps=2500,
    total_batch_size=64,
    learning_rate=1e-3,
    mixed_precision="bf16",
    hardware="1 x NVIDIA H100 80GB HBM3",
    wall_time_s=754.0,
    final_loss=0.03125,
)
COLORED = dataclasses.replace(
    SUMMARY,
    preset="colored-mnist",
    conditional=True,
    class_names=tuple(PRESETS["colored-mnist"].class_names),
    num_processes=8,
    total_batch_size=512,
)
FID = EvalResult(
    task_type="unconditional-image-generation",
    dataset_type="ylecun/mnist",
    dataset_name="MNIST",
    metric_type="fid",
    metric_name="FID (digit-classifier features)",
    metric_value=4.25,
)


def python_snippet(card: ModelCard) -> str:
    return re.search(r"```python\n(.*?)```", card.text, re.DOTALL).group(1)


def test_unconditional_card_metadata_round_trips(tmp_path):
    path = tmp_path / "README.md"
    path.write_text(str(render_model_card(SUMMARY, "tester/tiny-digits")))
    data = ModelCard.load(path).data

    assert data.library_name == "diffusers"
    assert data.pipeline_tag == "unconditional-image-generation"
    assert data.license == "cc-by-sa-3.0"
    assert data.datasets == ["ylecun/mnist"]
    assert data.tags == ["ddpm-zoo", "mnist-tiny", "diffusers", "diffusers-training", "ddpm", "mnist"]
    assert data.eval_results is None and "model-index" not in data.to_dict()


def test_conditional_card_is_tagged_and_shows_class_labels_and_guidance():
    card = render_model_card(COLORED, "tester/colored-digits")
    assert "class-conditional" in card.data.tags and "colored-mnist" in card.data.tags
    snippet = python_snippet(card)
    assert 'DiffusionPipeline.from_pretrained("tester/colored-digits", trust_remote_code=True)' in snippet
    assert "class_labels=[0, 1, 2], guidance_scale=3.0" in snippet
    assert 'class_labels=["nine", "zero"]' in snippet
    for scheduler in ("DPMSolverMultistepScheduler", "DDIMScheduler"):  # the plain swap, nothing added
        assert f"pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config)\n" in snippet
    assert "zero, one, two, three" in card.text


def test_card_body_has_grid_training_table_and_attribution():
    text = render_model_card(COLORED, "tester/colored-digits").text
    assert "![Samples from this model](samples/grid.png)" in text
    for row in (
        "| Preset | `colored-mnist` |",
        "| Data | `mnist-5k` (from `ylecun/mnist`) |",
        "| Training steps | 2,500 |",
        "| Total batch size | 512 (8 processes) |",
        "| Learning rate | 0.001 |",
        "| Mixed precision | bf16 |",
        "| Hardware | 1 x NVIDIA H100 80GB HBM3 |",
        "| Wall time | 12 min 34 s |",
        "| Final loss | 0.0312 |",
    ):
        assert row in text
    assert PRESETS["colored-mnist"].dataset.attribution in text


@pytest.mark.parametrize(
    ("prediction_type", "snr_gamma", "target", "weighting"),
    [
        ("epsilon", None, "predicting the noise", "uniform"),
        ("v_prediction", 5.0, "predicting the velocity v = sqrt(abar) eps", "Min-SNR-γ, γ = 5"),
        ("sample", 2.5, "predicting the clean image", "Min-SNR-γ, γ = 2.5"),
    ],
)
@pytest.mark.parametrize("summary", [SUMMARY, COLORED], ids=["mnist-tiny", "colored-mnist"])
def test_card_states_the_training_objective(summary, prediction_type, snr_gamma, target, weighting):
    text = render_model_card(dataclasses.replace(summary, prediction_type=prediction_type, snr_gamma=snr_gamma)).text
    assert target in text.replace("\n", " ")
    assert f"| Prediction type | {prediction_type} |" in text
    assert f"| Loss weighting | {weighting} |" in text


def test_eval_results_become_model_index_and_a_table(tmp_path):
    card = render_model_card(SUMMARY, "tester/tiny-digits", eval_results=[FID])
    path = tmp_path / "README.md"
    card.save(path)
    data = ModelCard.load(path).data

    assert data.model_name == "tiny-digits"
    [result] = data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_type) == ("fid", 4.25, "ylecun/mnist")
    assert "| FID (digit-classifier features) | MNIST | 4.25 |" in card.text


@pytest.mark.parametrize(
    ("loss_curve", "urls"), [(False, ["samples/grid.png"]), (True, ["samples/grid.png", "loss.png"])]
)
def test_the_hub_gallery_shows_the_samples_and_the_loss_curve(tmp_path, loss_curve, urls):
    path = tmp_path / "README.md"
    path.write_text(str(render_model_card(dataclasses.replace(SUMMARY, loss_curve=loss_curve))))
    widget = ModelCard.load(path).data.widget
    assert [entry["output"]["url"] for entry in widget] == urls and all(entry["text"] for entry in widget)


def test_the_model_index_names_the_reference_split(tmp_path):
    document = {
        "reference": {"dataset_type": "ylecun/mnist", "dataset_name": "MNIST (mnist-5k)", "split": "train"},
        "results": [{"scheduler": "ddim", "num_inference_steps": 50, "recognisability": 0.9}],
    }
    path = tmp_path / "README.md"
    render_model_card(SUMMARY, "tester/tiny-digits", eval_results=eval_results_for_card(document)).save(path)
    [result] = ModelCard.load(path).data.eval_results
    assert (result.dataset_type, result.dataset_split, result.metric_value) == ("ylecun/mnist", "train", 0.9)
    assert ev.digit_reference().split == "train"


def test_card_validates_against_the_hub_api(hub_server):
    render_model_card(COLORED, "tester/colored-digits", eval_results=[FID]).validate()
    broken = "---\nmodel-index:\n- results: []\n---\n# no name\n"
    answer = get_session().post(f"{hub_server.url}/api/validate-yaml", json={"content": broken, "repoType": "model"})
    assert answer.status_code == 400 and "model-index[0].name" in answer.json()["errors"][0]["message"]


def test_unknown_data_is_not_claimed_and_has_unknown_license():
    local = dataclasses.replace(SUMMARY, preset="custom", dataset="/home/me/pictures", local_dataset=True)
    card = render_model_card(local)
    assert card.data.datasets is None and card.data.license == "unknown"
    assert "a local image folder (`pictures`)" in card.text and "/home/me" not in card.text
    assert 'from_pretrained("path/to/the/pipeline/folder"' in card.text

    hub = render_model_card(dataclasses.replace(SUMMARY, preset="custom", dataset="someone/faces"))
    assert hub.data.datasets == ["someone/faces"] and hub.data.license == "unknown"


def test_every_preset_has_a_template_shipped_as_package_data():
    shipped = {p.name for p in resources.files("ddpm_zoo.model_cards").iterdir() if p.name.endswith(".md")}
    templates = {preset.card_template for preset in PRESETS.values()} | {GENERIC_CARD_TEMPLATE}
    assert shipped == templates | {BASE_CARD_TEMPLATE}
    for name in templates:  # each one a description block on the one base
        assert resources.files("ddpm_zoo.model_cards").joinpath(name).read_text().startswith('{% extends "base.md" %}')
    assert card_template(dataclasses.replace(SUMMARY, preset="no-such-preset")) == GENERIC_CARD_TEMPLATE


@pytest.mark.parametrize(
    "change",
    [{"preset_network": False}, {"beta_schedule": "squaredcos_cap_v2"}, {"num_train_timesteps": 500}],
    ids=["own-network", "cosine", "500-steps"],
)
def test_a_run_that_changed_the_recipe_gets_the_generic_card(change):
    """The preset's card describes its network and schedule; a run that changed them must not claim them."""
    assert card_template(SUMMARY) == "mnist-tiny.md"
    summary = dataclasses.replace(SUMMARY, **change)
    card = render_model_card(summary, "tester/model")
    assert card_template(summary) == GENERIC_CARD_TEMPLATE
    assert "28 -> 14 -> 7" not in card.text and "A DDPM trained with ddpm-zoo." in card.text
    beta, steps = summary.beta_schedule, summary.num_train_timesteps
    assert f"under a {beta} beta schedule of {steps} steps" in " ".join(card.text.split())
    assert f"| Noise schedule | {beta} betas, {steps} steps |" in card.text


@pytest.mark.parametrize("preset", [*PRESETS, "custom"])
def test_the_card_says_whether_the_weights_are_an_ema(preset):
    with_ema = render_model_card(dataclasses.replace(SUMMARY, preset=preset)).text
    without = render_model_card(dataclasses.replace(SUMMARY, preset=preset, use_ema=False)).text
    assert "exponential moving average" in with_ema and "exponential moving average" not in without
    assert "the final training weights (no EMA)" in " ".join(without.split())
    assert "| Published weights | final training weights (no EMA) |" in without


@pytest.mark.parametrize("preset", [*PRESETS, "custom"])
@pytest.mark.parametrize("conditional", [False, True])
def test_every_template_renders_a_runnable_snippet(preset, conditional):
    names = PRESETS[preset].class_names if preset in PRESETS and conditional else ()
    summary = dataclasses.replace(SUMMARY, preset=preset, conditional=conditional, class_names=names)
    card = render_model_card(summary, "tester/model")
    compile(python_snippet(card), "snippet", "exec")
    assert ("class_labels=" in card.text) == conditional
    assert "{{" not in card.text and "{%" not in card.text
    assert "## Training" in card.text and "## Data and license" in card.text


@pytest.mark.parametrize("num_train_timesteps", [400, 20])
@pytest.mark.parametrize("conditional", [False, True])
def test_the_snippets_step_counts_fit_a_model_with_fewer_timesteps(num_train_timesteps, conditional):
    """The first call leaves the step count to the pipeline (every timestep, ancestral DDPM); the solvers'
    counts never exceed the model's T."""
    names = PRESETS["colored-mnist"].class_names if conditional else ()
    summary = dataclasses.replace(
        COLORED, conditional=conditional, class_names=names, num_train_timesteps=num_train_timesteps
    )
    snippet = python_snippet(render_model_card(summary, "tester/model"))
    steps = [int(count) for count in re.findall(r"num_inference_steps=(\d+)", snippet)]
    assert steps and max(steps) <= num_train_timesteps and "1000" not in snippet
    first_call = next(line for line in snippet.splitlines() if line.startswith("images = pipe("))
    assert "num_inference_steps" not in first_call


SELF_GUIDED = dataclasses.replace(SUMMARY, self_guidance_clusters=50, self_guidance_scale=3.0)


@pytest.mark.parametrize("summary", [SELF_GUIDED, COLORED, dataclasses.replace(SELF_GUIDED, preset="custom")])
def test_the_card_separates_the_code_license_from_the_weights_license(summary):
    text = " ".join(render_model_card(summary).text.split())
    assert "The pipeline code (`pipeline.py`) is ddpm-zoo's, under the Apache-2.0 license" in text
    assert "the weights follow the data's license" in text


@pytest.mark.parametrize("loss_curve", [False, True])
def test_the_card_shows_the_loss_curve_where_the_run_drew_one(loss_curve):
    text = render_model_card(dataclasses.replace(SUMMARY, loss_curve=loss_curve)).text
    assert ("![Training loss](loss.png)" in text) is loss_curve


def test_the_card_names_the_installed_class_as_a_loader():
    text = " ".join(render_model_card(COLORED, "tester/colored-digits").text.split())
    assert 'ClassConditionalDDPMPipeline.from_pretrained("tester/colored-digits")` (from `ddpm_zoo.pipelines`)' in text


def test_the_card_of_a_digit_and_color_model_asks_for_a_red_seven():
    summary = dataclasses.replace(COLORED, color_names=("red", "green", "blue", "yellow", "cyan", "magenta"))
    card = str(render_model_card(summary, "me/colored-digits", None))
    assert 'pipe(class_labels=["seven", "three"], color_labels=["red", None], guidance_scale=3.0' in card
    assert "a red seven, then a three of any color" in card
    assert "`color_labels` the color (red, green, blue, yellow, cyan, magenta)" in card

"""Model cards: what a training run reports (TrainingSummary) rendered through a preset's template."""

import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ddpm_zoo.points import GENERATORS
from ddpm_zoo.presets import PRESETS, TOY_INFO, DatasetInfo

logger = logging.getLogger(__name__)

CARD_TEMPLATES = "ddpm_zoo.model_cards"
GENERIC_CARD_TEMPLATE = "generic.md"
BASE_CARD_TEMPLATE = "base.md"
SAMPLE_GRID = "samples/grid.png"
LOSS_CURVE = "loss.png"
SOLVER_STEPS, DDIM_STEPS = 25, 50  # the card snippet's step counts for DPM-Solver++ and DDIM, at most T
TEMPLATES = jinja2.Environment(
    loader=jinja2.FunctionLoader(
        lambda name: resources.files(CARD_TEMPLATES).joinpath(name).read_text(encoding="utf-8")
    )
)


@dataclass(frozen=True)
class TrainingSummary:
    """What a model card reports about one training run.

    `dataset` is the `--dataset_name` (a Hub id or `mnist-5k`), or the `--train_data_dir` folder with
    `local_dataset=True`. `hardware` is shown as given (keep host names out of it: the card is public).
    """

    preset: str
    conditional: bool
    dataset: str
    resolution: int
    max_train_steps: int
    total_batch_size: int
    learning_rate: float
    mixed_precision: str
    hardware: str
    wall_time_s: float
    final_loss: float | None
    num_processes: int = 1
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None
    timestep_sampling: str = "uniform"
    class_names: tuple[str, ...] = ()
    color_names: tuple[str, ...] = ()
    local_dataset: bool = False
    autoguidance_scale: float | None = None
    autoguidance_guide_step: int | None = None
    self_guidance_clusters: int | None = None
    self_guidance_scale: float | None = None
    use_ema: bool = True
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    preset_network: bool = True
    loss_curve: bool = False
    variance_type: str = "fixed_small"

    @property
    def follows_preset(self) -> bool:
        """Whether the run trained its preset's network under its preset's noise schedule, so the preset's
        card (which describes both) applies; otherwise the generic card does."""
        preset = PRESETS.get(self.preset)
        return (
            preset is not None
            and self.preset_network
            and self.beta_schedule == preset.scheduler.get("beta_schedule", "linear")
            and self.num_train_timesteps == preset.scheduler.get("num_train_timesteps", 1000)
        )


def known_datasets() -> dict[str, DatasetInfo]:
    """Dataset names the presets use (Hub ids and the embedded `mnist-5k`) mapped to license and attribution."""
    known = {}
    for preset in PRESETS.values():
        known[preset.dataset.hub_id] = preset.dataset
        known[preset.training.get("dataset_name", preset.dataset.hub_id)] = preset.dataset
    return known


def card_dataset(summary: TrainingSummary) -> tuple[str | None, DatasetInfo | None, str]:
    """The Hub dataset id for the card's `datasets`, its license/attribution if known, and a display name."""
    if summary.dataset in GENERATORS and not summary.local_dataset:
        return None, TOY_INFO, f"`{summary.dataset}`"
    info = known_datasets().get(summary.dataset)
    if info is not None:
        shown = f"`{summary.dataset}`" + ("" if summary.dataset == info.hub_id else f" (from `{info.hub_id}`)")
        return info.hub_id, info, shown
    if not summary.local_dataset and re.fullmatch(r"[\w.-]+/[\w.-]+", summary.dataset):
        return summary.dataset, None, f"`{summary.dataset}`"
    return None, None, f"a local image folder (`{Path(summary.dataset).name}`)"


def card_tags(summary: TrainingSummary) -> list[str]:
    preset = PRESETS.get(summary.preset)
    tags = ["ddpm-zoo", summary.preset, "diffusers", "diffusers-training", "ddpm", *(preset.tags if preset else ())]
    return tags + (["class-conditional"] if summary.conditional else [])


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def loss_weighting(summary: TrainingSummary) -> str:
    """The card's loss-weighting cell: Min-SNR-γ or uniform, and how the timesteps were drawn."""
    weighting = "uniform" if summary.snr_gamma is None else f"Min-SNR-γ, γ = {summary.snr_gamma:g}"
    if summary.timestep_sampling == "importance":
        return f"{weighting}, timesteps importance-sampled by weight"
    return weighting


def sampling_guidance(summary: TrainingSummary) -> str:
    """The card's description of the pipeline's default guidance."""
    if summary.conditional:
        return "classifier-free guidance"
    if summary.self_guidance_clusters:
        scale, clusters = summary.self_guidance_scale, summary.self_guidance_clusters
        return f"self-guidance, w = {scale:g}, over {clusters} k-means clusters"
    if summary.autoguidance_scale is None:
        return "none"
    scale, step = summary.autoguidance_scale, summary.autoguidance_guide_step
    return f"autoguidance, w = {scale:g}, guide: EMA weights at step {step:,}"


def training_rows(summary: TrainingSummary, dataset_shown: str) -> list[tuple[str, str]]:
    """The card's training-configuration table, as (setting, value) rows."""
    processes = f"{summary.num_processes} process{'es' if summary.num_processes != 1 else ''}"
    precision = "no (fp32)" if summary.mixed_precision in ("no", "", None) else summary.mixed_precision
    rows = [
        ("Preset", f"`{summary.preset}`"),
        ("Data", dataset_shown),
        ("Resolution", f"{summary.resolution} x {summary.resolution}" if summary.resolution else "2-D points"),
        ("Training steps", f"{summary.max_train_steps:,}"),
        ("Total batch size", f"{summary.total_batch_size} ({processes})"),
        ("Learning rate", f"{summary.learning_rate:g}"),
        ("Mixed precision", precision),
        ("Noise schedule", f"{summary.beta_schedule} betas, {summary.num_train_timesteps} steps"),
        ("Published weights", "EMA of training" if summary.use_ema else "final training weights (no EMA)"),
        ("Prediction type", summary.prediction_type),
        ("Loss weighting", loss_weighting(summary)),
        ("Reverse-process variance", VARIANCE_SHOWN.get(summary.variance_type, summary.variance_type)),
        ("Sampling guidance", sampling_guidance(summary)),
        ("Hardware", summary.hardware),
        ("Wall time", format_duration(summary.wall_time_s)),
        ("Final loss", "n/a" if summary.final_loss is None else f"{summary.final_loss:.4f}"),
    ]
    return [(name, str(value).replace("|", "\\|")) for name, value in rows]


VARIANCE_SHOWN = {
    "fixed_small": "fixed, β̃_t (`fixed_small`)",
    "fixed_large": "fixed, β_t (`fixed_large`)",
    "learned_range": "learned (`learned_range`, Improved DDPM's hybrid loss)",
}

PREDICTION_TARGETS = {
    "epsilon": "predicting the noise",
    "v_prediction": "predicting the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho, 2022)",
    "sample": "predicting the clean image",
}


def loads_as_ddpm_pipeline(summary: TrainingSummary) -> bool:
    """Whether the run's pipeline is published as diffusers' own `DDPMPipeline` (as `publish.as_ddpm_pipeline`
    decides): an unconditional, unguided image model with a fixed variance."""
    preset = PRESETS.get(summary.preset)
    unguided = not summary.self_guidance_clusters and summary.autoguidance_scale is None
    images = preset is None or preset.data_kind == "images"
    return images and unguided and not summary.conditional and summary.variance_type != "learned_range"


def pipeline_class(summary: TrainingSummary) -> str:
    """The class a plain diffusers load gives."""
    preset = PRESETS.get(summary.preset)
    if preset is not None and preset.data_kind == "points":
        return "PointDiffusionPipeline"
    if loads_as_ddpm_pipeline(summary):
        return "DDPMPipeline"
    return "ClassConditionalDDPMPipeline" if summary.conditional else "UnconditionalDDPMPipeline"


def card_context(summary: TrainingSummary, repo_id: str | None, eval_results: list | None) -> dict:
    """Everything the card templates use besides the metadata."""
    preset = PRESETS.get(summary.preset)
    _, dataset, dataset_shown = card_dataset(summary)
    names = list(summary.class_names)
    example_labels = list(range(min(3, len(names) or 3)))
    labels = json.dumps([names[-1], names[0]]) if len(names) > 1 else example_labels
    guided_by, example_request = f"class_labels={labels}, guidance_scale=3.0", ""
    if summary.color_names and names:
        first, second, color = names[7 % len(names)], names[3 % len(names)], summary.color_names[0]
        example_labels = json.dumps([first, second])
        guided_by = f'class_labels={example_labels}, color_labels=["{color}", None], guidance_scale=3.0'
        example_request = f"a {color} {first}, then a {second} of any color"
    return {
        "model_id": repo_id or "path/to/the/pipeline/folder",
        "title": repo_id.split("/")[-1] if repo_id else f"ddpm-zoo {summary.preset}",
        "preset": summary.preset,
        "prediction_target": PREDICTION_TARGETS.get(summary.prediction_type, summary.prediction_type),
        "description": preset.description if summary.follows_preset else "A DDPM trained with ddpm-zoo.",
        "published_weights": "the exponential moving average of training"
        if summary.use_ema
        else "the final training weights (no EMA)",
        "beta_schedule": summary.beta_schedule,
        "num_train_timesteps": summary.num_train_timesteps,
        "conditional": summary.conditional,
        "pipeline_class": pipeline_class(summary),
        "remote_code": not loads_as_ddpm_pipeline(summary),
        "class_names": names,
        "color_names": list(summary.color_names),
        "example_labels": example_labels,
        "example_colors": f'["{summary.color_names[0]}", None]' if summary.color_names else "",
        "example_request": example_request,
        "sampling_arguments": guided_by if summary.conditional else "batch_size=4",
        "solver_steps": min(SOLVER_STEPS, summary.num_train_timesteps),
        "ddim_steps": min(DDIM_STEPS, summary.num_train_timesteps),
        "sample_grid": SAMPLE_GRID,
        "loss_curve": LOSS_CURVE if summary.loss_curve else None,
        "autoguidance": summary.autoguidance_scale is not None,
        "autoguidance_scale": f"{summary.autoguidance_scale:g}" if summary.autoguidance_scale is not None else "",
        "autoguidance_guide_step": f"{summary.autoguidance_guide_step:,}" if summary.autoguidance_guide_step else "",
        "self_guidance": bool(summary.self_guidance_clusters),
        "self_guidance_clusters": summary.self_guidance_clusters or "",
        "self_guidance_scale": f"{summary.self_guidance_scale:g}" if summary.self_guidance_scale is not None else "",
        "dataset": dataset,
        "dataset_shown": dataset_shown,
        "training_rows": training_rows(summary, dataset_shown),
        "eval_rows": [
            (
                r.metric_name or r.metric_type,
                r.dataset_name,
                f"{r.metric_value:.4g}" if isinstance(r.metric_value, float) else r.metric_value,
            )
            for r in eval_results or []
        ],
    }


def gallery(summary: TrainingSummary) -> list[dict]:
    """The card's `widget` entries, which the Hub shows as the model's gallery: the sample grid, and the loss
    curve where the run drew one."""
    entries = [{"text": "Samples from the published weights", "output": {"url": SAMPLE_GRID}}]
    if summary.loss_curve:
        entries.append({"text": "Training loss", "output": {"url": LOSS_CURVE}})
    return entries


def card_template(summary: TrainingSummary) -> str:
    """The template file for the run's preset in `model_cards/`, or the generic one where the run changed the
    preset's network or noise schedule (the preset's card describes both)."""
    name = PRESETS[summary.preset].card_template if summary.follows_preset else GENERIC_CARD_TEMPLATE
    return name if resources.files(CARD_TEMPLATES).joinpath(name).is_file() else GENERIC_CARD_TEMPLATE


def render_model_card(
    summary: TrainingSummary, repo_id: str | None = None, eval_results: list[EvalResult] | None = None
) -> ModelCard:
    """The model card (README.md) for a trained pipeline: Hub metadata plus the preset's template, which
    extends `base.md` with its description block (rendered as `ModelCard.from_template` does, with a loader
    so that templates can extend one another).

    `eval_results` (huggingface_hub `EvalResult`s, e.g. FID) become the `model-index` metadata and a table.
    """
    dataset_id, dataset, _ = card_dataset(summary)
    model_name = repo_id.split("/")[-1] if repo_id else f"ddpm-zoo-{summary.preset}"
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        license=dataset.license if dataset else "unknown",
        datasets=[dataset_id] if dataset_id else None,
        tags=card_tags(summary),
        eval_results=list(eval_results) if eval_results else None,
        model_name=model_name if eval_results else None,
        widget=gallery(summary),
    )
    template = TEMPLATES.get_template(card_template(summary))
    context = {**data.to_dict(), **card_context(summary, repo_id, eval_results)}
    return ModelCard(template.render(card_data=data.to_yaml(), **context))


def _recorded_training(folder: Path) -> dict | None:
    """The `training_summary.json` training wrote beside the pipeline, if it has the card's summary."""
    summary_path = folder / "training_summary.json"
    if not summary_path.exists():
        return None
    recorded = json.loads(summary_path.read_text(encoding="utf-8"))
    return recorded if "card" in recorded else None


def _replace_file(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


def refresh_model_card(
    folder: str | os.PathLike, eval_results: list[EvalResult] | None, repo_id: str | None = None
) -> Path | None:
    """Re-render a trained folder's README.md with evaluation results in its model-index (and, given
    `repo_id`, for that Hub repo, recorded in `training_summary.json`).

    Needs the `training_summary.json` that training writes (its `card` entry); returns None without it.
    """
    folder = Path(folder)
    recorded = _recorded_training(folder)
    if recorded is None:
        return None
    if repo_id is not None:
        recorded["hub_model_id"] = repo_id
        _replace_file(folder / "training_summary.json", json.dumps(recorded, indent=2))
    readme = folder / "README.md"
    _replace_file(readme, str(_recorded_card(recorded, eval_results)))
    return readme


def _recorded_card(recorded: dict, eval_results: list[EvalResult] | None) -> ModelCard:
    """The card training (or `evaluate`) rendered for a recorded run."""
    card = recorded["card"]
    fields = {
        **card,
        "class_names": tuple(card.get("class_names", ())),
        "color_names": tuple(card.get("color_names", ())),
    }
    return render_model_card(TrainingSummary(**fields), recorded.get("hub_model_id"), eval_results)


def retarget_model_card(folder: Path, repo_id: str) -> None:
    """Point a trained folder's card (title, `from_pretrained` snippet) at `repo_id`, keeping its model-index;
    a card edited by hand (it differs from what ddpm-zoo rendered) is left as it is."""
    recorded = _recorded_training(folder)
    readme = folder / "README.md"
    if recorded is None or recorded.get("hub_model_id") == repo_id or not readme.is_file():
        return
    text = readme.read_text(encoding="utf-8")
    try:
        eval_results = ModelCard(text).data.eval_results
        rendered = str(_recorded_card(recorded, eval_results))
    except (ValueError, TypeError, yaml.YAMLError):
        rendered = None
    if text != rendered:
        logger.warning("%s was edited by hand: it keeps the repo id it names", readme)
        return
    refresh_model_card(folder, eval_results, repo_id)

"""Publishable pipeline folders: save (weights, pipeline.py, model_index.json, samples), card, push and pull."""

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import diffusers
import yaml
from diffusers import DiffusionPipeline
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    HTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from ddpm_zoo.errors import UserInputError
from ddpm_zoo.pipelines import PIPELINE_SOURCE_FILE, ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.presets import PRESETS, DatasetInfo

logger = logging.getLogger(__name__)

CUSTOM_PIPELINE_MODULE = "pipeline"
CARD_TEMPLATES = "ddpm_zoo.model_cards"
GENERIC_CARD_TEMPLATE = "generic.md"
SAMPLE_GRID = "samples/grid.png"
PIPELINE_CLASSES = {cls.__name__: cls for cls in (UnconditionalDDPMPipeline, ClassConditionalDDPMPipeline)}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Never uploaded, whatever else sits in the folder: training state, logs, pickles, hidden temporary folders.
PUSH_IGNORE_PATTERNS = [
    "checkpoint-*",
    "*/checkpoint-*",
    "logs/*",
    ".*",
    "*/.*",
    "*optimizer*",
    "*random_states*",
    *(f"*{suffix}" for suffix in PICKLE_SUFFIXES),
]


def save_pipeline_folder(
    pipeline: DiffusionPipeline, output_dir: str | os.PathLike, extra_files: dict | None = None
) -> Path:
    """Write `pipeline` to `output_dir` so plain diffusers can load it with `trust_remote_code=True`.

    The folder gets safetensors weights, `pipeline.py` (a verbatim copy of ddpm-zoo's pipeline file)
    and a `model_index.json` whose `_class_name` is `["pipeline", "<Class>"]`. Everything is first
    written to a temporary sibling folder and then moved into place entry by entry, `model_index.json`
    last, so an interrupted save never leaves a half-written model behind a valid index.
    `extra_files` maps relative paths to bytes (e.g. the model card, sample grids).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pipeline-tmp-", dir=output_dir))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        shutil.copyfile(PIPELINE_SOURCE_FILE, staging / f"{CUSTOM_PIPELINE_MODULE}.py")
        index_path = staging / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = [CUSTOM_PIPELINE_MODULE, type(pipeline).__name__]
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        for relative, content in (extra_files or {}).items():
            target = staging / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        entries = sorted((p for p in staging.iterdir()), key=lambda p: p.name == "model_index.json")
        for entry in entries:
            destination = output_dir / entry.name
            if destination.is_dir() and not destination.is_symlink():
                old = output_dir / f".old-{entry.name}-{os.getpid()}"
                destination.rename(old)
                entry.rename(destination)
                shutil.rmtree(old)
            else:
                os.replace(entry, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


# ----------------------------------------------------------------------------------------- model cards


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
    class_names: tuple[str, ...] = ()
    local_dataset: bool = False
    autoguidance_scale: float | None = None
    autoguidance_guide_step: int | None = None
    self_guidance_clusters: int | None = None
    self_guidance_scale: float | None = None
    use_ema: bool = True
    beta_schedule: str = "linear"
    num_train_timesteps: int = 1000
    preset_network: bool = True

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
    info = known_datasets().get(summary.dataset)
    if info is not None:
        shown = f"`{summary.dataset}`" + ("" if summary.dataset == info.hub_id else f" (from `{info.hub_id}`)")
        return info.hub_id, info, shown
    if not summary.local_dataset and re.fullmatch(r"[\w.-]+/[\w.-]+", summary.dataset):
        return summary.dataset, None, f"`{summary.dataset}`"
    return None, None, f"a local image folder (`{Path(summary.dataset).name}`)"


def card_tags(summary: TrainingSummary) -> list[str]:
    preset = PRESETS.get(summary.preset)
    tags = ["ddpm-zoo", summary.preset, "diffusers", "ddpm", *(preset.tags if preset else ())]
    return tags + (["class-conditional"] if summary.conditional else [])


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


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
        ("Resolution", f"{summary.resolution} x {summary.resolution}"),
        ("Training steps", f"{summary.max_train_steps:,}"),
        ("Total batch size", f"{summary.total_batch_size} ({processes})"),
        ("Learning rate", f"{summary.learning_rate:g}"),
        ("Mixed precision", precision),
        ("Noise schedule", f"{summary.beta_schedule} betas, {summary.num_train_timesteps} steps"),
        ("Published weights", "EMA of training" if summary.use_ema else "final training weights (no EMA)"),
        ("Prediction type", summary.prediction_type),
        ("Loss weighting", "uniform" if summary.snr_gamma is None else f"Min-SNR-γ, γ = {summary.snr_gamma:g}"),
        ("Sampling guidance", sampling_guidance(summary)),
        ("Hardware", summary.hardware),
        ("Wall time", format_duration(summary.wall_time_s)),
        ("Final loss", "n/a" if summary.final_loss is None else f"{summary.final_loss:.4f}"),
    ]
    return [(name, str(value).replace("|", "\\|")) for name, value in rows]


PREDICTION_TARGETS = {
    "epsilon": "predicting the noise",
    "v_prediction": "predicting the velocity v = sqrt(abar) eps - sqrt(1 - abar) x_0 (Salimans & Ho, 2022)",
    "sample": "predicting the clean image",
}


def card_context(summary: TrainingSummary, repo_id: str | None, eval_results: list | None) -> dict:
    """Everything the card templates use besides the metadata."""
    preset = PRESETS.get(summary.preset)
    _, dataset, dataset_shown = card_dataset(summary)
    names = list(summary.class_names)
    return {
        "model_id": repo_id or "path/to/the/pipeline/folder",
        "title": repo_id.split("/")[-1] if repo_id else f"ddpm-zoo {summary.preset}",
        "preset": summary.preset,
        "prediction_target": PREDICTION_TARGETS.get(summary.prediction_type, summary.prediction_type),
        "description": preset.description if summary.follows_preset else "A DDPM trained with ddpm-zoo.",
        "use_ema": summary.use_ema,
        "beta_schedule": summary.beta_schedule,
        "num_train_timesteps": summary.num_train_timesteps,
        "conditional": summary.conditional,
        "pipeline_class": "ClassConditionalDDPMPipeline" if summary.conditional else "UnconditionalDDPMPipeline",
        "class_names": names,
        "example_labels": list(range(min(3, len(names) or 3))),
        "name_labels": json.dumps([names[-1], names[0]]) if len(names) > 1 else "",
        "sample_grid": SAMPLE_GRID,
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


def card_template(summary: TrainingSummary) -> str:
    """The template file for the run's preset in `model_cards/`, or the generic one where the run changed the
    preset's network or noise schedule (the preset's card describes both)."""
    name = PRESETS[summary.preset].card_template if summary.follows_preset else GENERIC_CARD_TEMPLATE
    return name if resources.files(CARD_TEMPLATES).joinpath(name).is_file() else GENERIC_CARD_TEMPLATE


def render_model_card(
    summary: TrainingSummary, repo_id: str | None = None, eval_results: list[EvalResult] | None = None
) -> ModelCard:
    """The model card (README.md) for a trained pipeline: Hub metadata plus the preset's template body.

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
    )
    context = card_context(summary, repo_id, eval_results)
    with resources.as_file(resources.files(CARD_TEMPLATES).joinpath(card_template(summary))) as path:
        return ModelCard.from_template(data, template_path=str(path), **context)


def _recorded_training(folder: Path) -> dict | None:
    """The `training_summary.json` training wrote beside the pipeline, if it has the card's summary."""
    summary_path = folder / "training_summary.json"
    if not summary_path.exists():
        return None
    recorded = json.loads(summary_path.read_text())
    return recorded if "card" in recorded else None


def _replace_file(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
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
    fields = {**recorded["card"], "class_names": tuple(recorded["card"].get("class_names", ()))}
    return render_model_card(TrainingSummary(**fields), recorded.get("hub_model_id"), eval_results)


def retarget_model_card(folder: Path, repo_id: str) -> None:
    """Point a trained folder's card (title, `from_pretrained` snippet) at `repo_id`, keeping its model-index;
    a card edited by hand (it differs from what ddpm-zoo rendered) is left as it is."""
    recorded = _recorded_training(folder)
    readme = folder / "README.md"
    if recorded is None or recorded.get("hub_model_id") == repo_id or not readme.is_file():
        return
    text = readme.read_text()
    try:
        eval_results = ModelCard(text).data.eval_results
        rendered = str(_recorded_card(recorded, eval_results))
    except (ValueError, TypeError, yaml.YAMLError):
        rendered = None
    if text != rendered:
        logger.warning("%s was edited by hand: it keeps the repo id it names", readme)
        return
    refresh_model_card(folder, eval_results, repo_id)


# ----------------------------------------------------------------------------------------------- push


def is_component_entry(value) -> bool:
    """A model_index.json entry naming a component ([library, class] or [null, null] when left out), as
    opposed to a pipeline config value such as a list of cluster sizes."""
    return isinstance(value, list) and len(value) == 2 and all(item is None or isinstance(item, str) for item in value)


def pipeline_components(index: dict) -> list[str]:
    """The component folders a `model_index.json` names (`unet`, `scheduler`, ...)."""
    return [name for name, value in index.items() if not name.startswith("_") and is_component_entry(value)]


def read_model_index(folder: Path) -> dict:
    index_path = folder / "model_index.json"
    if not folder.is_dir():
        raise UserInputError(f"{folder} is not a folder")
    if not index_path.is_file():
        raise UserInputError(
            f"{folder} has no model_index.json, so it is not a saved pipeline folder "
            "(training writes one to --output_dir; save_pipeline_folder writes one too)"
        )
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise UserInputError(f"{index_path} is not valid JSON: {error}") from None
    if not isinstance(index, dict):
        raise UserInputError(f"{index_path} holds a JSON {type(index).__name__}, not a pipeline index")
    return index


def check_weights(folder: Path, component: str) -> None:
    """Refuse a component whose weights exist only as pickles: loading a pickle can run arbitrary code."""
    files = [p for p in (folder / component).glob("*") if p.is_file()]
    pickles = [p.name for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not any(p.suffix == ".safetensors" for p in files):
        raise UserInputError(
            f"{folder / component} holds only pickle weights ({', '.join(sorted(pickles))}); ddpm-zoo publishes "
            "safetensors only, since loading a pickle can run arbitrary code: re-save the pipeline with "
            "save_pretrained(..., safe_serialization=True) or ddpm_zoo.hub.save_pipeline_folder"
        )


def push_patterns(index: dict) -> tuple[list[str], list[str]]:
    """(allow, delete) patterns: the pipeline's own files; stale files in its own folders are deleted."""
    folders = [*pipeline_components(index), "samples"]
    files = ["model_index.json", "README.md"]
    if isinstance(index.get("_class_name"), list):
        files.append(f"{index['_class_name'][0]}.py")
    return files + [f"{name}/*" for name in folders], [f"{name}/*" for name in folders]


def publishable_files(folder: str | os.PathLike) -> list[str]:
    """Check `folder` is a pipeline folder ready to publish and list the files a push uploads."""
    folder = Path(folder)
    index = read_model_index(folder)
    class_name = index.get("_class_name")
    if isinstance(class_name, list) and not (folder / f"{class_name[0]}.py").is_file():
        raise UserInputError(f"{folder}/model_index.json names custom code {class_name[0]}.py, which is missing")
    for component in pipeline_components(index):
        check_weights(folder, component)
    if not (folder / "README.md").is_file():
        logger.warning("%s has no README.md: the repo will have no model card", folder)
    allow, _ = push_patterns(index)
    every_file = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(every_file, allow_patterns=allow, ignore_patterns=PUSH_IGNORE_PATTERNS))


def check_push_target(repo_id: str, revision: str | None) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserInputError(f"invalid repo id {repo_id!r}: {str(error).splitlines()[0]}") from None
    if revision is not None and (re.fullmatch(r"[0-9a-f]{40}", revision) or revision.startswith("refs/")):
        raise UserInputError(f"--revision must name a branch to push to, not {revision!r}")


def hub_error_message(error: HTTPError | OfflineModeIsEnabled, repo_id: str) -> str:
    """One line for a failed Hub call: the Hub's answer (with a hint about tokens where it refused access),
    or why it could not be reached."""
    if not isinstance(error, HfHubHTTPError):
        return f"cannot reach the Hub at {constants.ENDPOINT} to push to {repo_id}: {first_line(error)}"
    status = http_status(error)
    detail = (getattr(error, "server_message", None) or str(error)).strip().splitlines()[0].rstrip(".;")
    message = f"pushing to {repo_id} failed ({status}): {detail}"
    if status in (401, 403):
        message += "; log in with `hf auth login` or set HF_TOKEN to a token with write access"
    return message


def check_write_access(api: HfApi, repo_id: str) -> None:
    """`create_repo(exist_ok=True)` also accepts an existing repo the token may only read: refuse a namespace
    that is neither the token's user nor an organisation it may write to, and a read-only token."""
    account = api.whoami()
    writable = {account.get("name")} | {
        org.get("name") for org in account.get("orgs", []) if org.get("roleInOrg") not in ("read", "contributor")
    }
    role = account.get("auth", {}).get("accessToken", {}).get("role")
    namespace = repo_id.split("/")[0]
    if namespace not in writable or role == "read":
        what = "a read-only token" if role == "read" else f"{account.get('name')}'s token"
        raise UserInputError(
            f"{repo_id} exists, and {what} cannot write to it; push to a repo of your own (e.g. "
            f"{account.get('name')}/{repo_id.split('/')[-1]}) or use a token with write access"
        )


def create_push_repo(repo_id: str, private: bool = False, token: str | None = None, revision: str | None = None) -> str:
    """Create the Hub repo `repo_id` (and branch `revision`) if needed and return its full id (`user/name`).

    `private` creates it private and refuses an existing public repo; without it the Hub's default applies
    (public, or private where the organisation says so). Training calls this before its first step, as
    diffusers' example does, so a bad id, token or permission fails before hours of training.
    """
    check_push_target(repo_id, revision)
    api = HfApi(token=token)
    try:
        full_id = api.create_repo(repo_id, private=True if private else None, exist_ok=True).repo_id
        check_write_access(api, full_id)
        if private and not api.repo_info(full_id).private:
            raise UserInputError(
                f"{full_id} already exists and is public; --private does not change the visibility of an "
                "existing repo: make it private in its settings first, or push without --private"
            )
        if revision is not None:
            api.create_branch(full_id, branch=revision, exist_ok=True)
    except (HTTPError, OfflineModeIsEnabled) as error:
        raise UserInputError(hub_error_message(error, repo_id)) from None
    return full_id


def push_pipeline_folder(
    folder: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Upload a saved pipeline folder to the Hub repo `repo_id` (created if needed) and return the commit id.

    Only the pipeline's files go (model_index.json, pipeline.py, README.md, its component folders and
    samples/); checkpoints, logs, optimizer state, pickles and hidden folders never do. `revision` is a
    branch, created from `main` when new. `private` creates the repo private and refuses to push to an
    existing public one. A card that training wrote for another repo id is re-rendered for this one first.
    The token is passed to huggingface_hub only; it is never logged or written.
    """
    folder = Path(folder)
    files = publishable_files(folder)
    allow, delete = push_patterns(read_model_index(folder))
    repo_id = create_push_repo(repo_id, private, token, revision)  # checks the target before any request
    retarget_model_card(folder, repo_id)
    logger.info("pushing %d files from %s to %s", len(files), folder, repo_id)
    try:
        info = HfApi(token=token).upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} with ddpm-zoo",
            allow_patterns=allow,
            ignore_patterns=PUSH_IGNORE_PATTERNS,
            delete_patterns=delete,
        )
    except (HTTPError, OfflineModeIsEnabled) as error:
        raise UserInputError(hub_error_message(error, repo_id)) from None
    logger.info("pushed %s at commit %s", repo_id, info.oid)
    return info.oid


# ----------------------------------------------------------------------------------------------- pull


def download_pipeline(name_or_path: str, revision: str | None = None, token: str | None = None) -> Path:
    """A local folder for a folder path or a Hub repo id (one snapshot of `revision`, pickles skipped)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        validate_repo_id(name_or_path)
        folder = snapshot_download(
            name_or_path, revision=revision, token=token, ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES]
        )
    except HFValidationError:
        raise UserInputError(f"{name_or_path} is neither a folder nor a Hub repo id") from None
    except RepositoryNotFoundError:
        raise UserInputError(
            f"no model repo {name_or_path} on the Hub, or it is private and needs a token (HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise UserInputError(f"{name_or_path} has no revision {revision!r}") from None
    except HfHubHTTPError as error:
        raise UserInputError(f"downloading {name_or_path} failed ({http_status(error)}): {first_line(error)}") from None
    except (LocalEntryNotFoundError, HTTPError, OfflineModeIsEnabled) as error:
        raise UserInputError(
            f"cannot download {name_or_path} from the Hub at {constants.ENDPOINT}, and no complete copy is in the "
            f"local cache: {first_line(error)}"
        ) from None
    return Path(folder)


def first_line(error: Exception) -> str:
    """The first line of an error's message (its type's name when it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def http_status(error: HfHubHTTPError) -> int | None:
    return error.response.status_code if error.response is not None else None


def load_pipeline(name_or_path: str, revision: str | None = None, token: str | None = None) -> DiffusionPipeline:
    """Load a ddpm-zoo pipeline from a folder or Hub repo with the installed classes: no downloaded code runs.

    (`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` runs the repo's pipeline.py instead.)
    """
    folder = download_pipeline(name_or_path, revision, token)
    index = read_model_index(folder)
    class_name = index.get("_class_name")
    class_name = class_name[-1] if isinstance(class_name, list) else class_name
    if class_name not in PIPELINE_CLASSES:
        raise UserInputError(f"{name_or_path} holds a {class_name}, not a ddpm-zoo pipeline")
    kwargs = {}
    for name, value in index.items():
        if name.startswith("_"):
            continue
        if is_component_entry(value):
            if value == [None, None]:  # an optional component left out (e.g. no autoguidance guide_unet)
                kwargs[name] = None
                continue
            if value[0] != "diffusers":
                raise UserInputError(f"{name_or_path}: component {name} comes from {value[0]}, not diffusers")
            check_weights(folder, name)
            kwargs[name] = getattr(diffusers, value[1]).from_pretrained(folder / name)
        else:
            kwargs[name] = value
    return PIPELINE_CLASSES[class_name](**kwargs)


# ------------------------------------------------------------------------------------------------ CLI


def push_command(args: argparse.Namespace) -> int:
    """`ddpm-zoo push FOLDER REPO_ID`: upload a pipeline folder and print the commit."""
    commit = push_pipeline_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.folder} to {args.repo_id} ({args.revision or 'main'}): commit {commit}")
    return 0


def add_trust_remote_code_option(parser: argparse.ArgumentParser) -> None:
    """`--trust_remote_code` for the commands that load a pipeline (sample, visualize, evaluate)."""
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="run the custom pipeline code of a folder or repo that is not a ddpm-zoo pipeline (ddpm-zoo's own "
        "load into the installed classes and never need this)",
    )


def add_cli_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `push` on the `ddpm-zoo` command line."""
    parser = subparsers.add_parser(
        "push",
        help="upload a saved pipeline folder to the Hugging Face Hub",
        description="Upload a pipeline folder (weights, pipeline.py, model card, samples) to a Hub model repo. "
        "Checkpoints, logs and optimizer state stay local.",
    )
    parser.add_argument("folder", type=Path, help="the pipeline folder (a training run's --output_dir)")
    parser.add_argument("repo_id", help="the Hub repo, e.g. your-name/mnist-ddpm (created if needed)")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="push to this branch (created from main when new)")
    parser.add_argument("--commit_message", "--commit-message", help="the commit's message")
    parser.add_argument(
        "--token",
        help="a Hub token with write access; default: HF_TOKEN or the `hf auth login` token "
        "(prefer those: a token on the command line shows in the process list)",
    )
    parser.set_defaults(func=push_command)
    return parser

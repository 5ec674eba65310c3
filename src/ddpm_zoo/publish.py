"""Publishing: a pipeline as a folder plain diffusers loads (save), and that folder on the Hub (push)."""

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from diffusers import DDPMPipeline, DiffusionPipeline
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import HFValidationError, HTTPError, OfflineModeIsEnabled
from huggingface_hub.utils import filter_repo_objects, validate_repo_id

from ddpm_zoo.cards import LOSS_CURVE, SAMPLE_GRID, retarget_model_card
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.hub import PICKLE_SUFFIXES, hub_error_message
from ddpm_zoo.loading import check_weights, pipeline_components, read_model_index
from ddpm_zoo.pipelines import UnconditionalDDPMPipeline, pipeline_source_file

logger = logging.getLogger(__name__)

CUSTOM_PIPELINE_MODULE = "pipeline"
FIXED_VARIANCES = ("fixed_small", "fixed_large")
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


def as_ddpm_pipeline(pipeline: DiffusionPipeline) -> DDPMPipeline | None:
    """The same model as diffusers' own `DDPMPipeline` where it needs nothing more (unconditional, unguided, a
    UNet without class embeddings, a fixed variance), so plain diffusers loads it with no flag; else None."""
    if type(pipeline) is not UnconditionalDDPMPipeline or pipeline.guide_unet is not None:
        return None
    if pipeline.config.get("cluster_sizes") is not None or pipeline.unet.config.num_class_embeds is not None:
        return None
    if pipeline.scheduler.config.get("variance_type") not in FIXED_VARIANCES:
        return None
    return DDPMPipeline(unet=pipeline.unet, scheduler=pipeline.scheduler)


def save_with_code(pipeline: DiffusionPipeline, staging: Path) -> None:
    """Save `pipeline` with `pipeline.py` and an index naming it as `["pipeline", "<Class>"]`."""
    pipeline.save_pretrained(staging, safe_serialization=True)
    shutil.copyfile(pipeline_source_file(pipeline), staging / f"{CUSTOM_PIPELINE_MODULE}.py")
    index_path = staging / "model_index.json"
    index = json.loads(index_path.read_text())
    index["_class_name"] = [CUSTOM_PIPELINE_MODULE, type(pipeline).__name__]
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_pipeline_folder(
    pipeline: DiffusionPipeline, output_dir: str | os.PathLike, extra_files: dict | None = None
) -> Path:
    """Write `pipeline` to `output_dir` so plain diffusers can load it.

    The folder gets safetensors weights and a `model_index.json`. A model that needs nothing beyond diffusers'
    `DDPMPipeline` (`as_ddpm_pipeline`) is saved as one, which loads with no flag and ships no code; any other
    gets `pipeline.py` (a verbatim copy of the ddpm-zoo pipeline file that defines its class) and `_class_name`
    `["pipeline", "<Class>"]`, which loads with `trust_remote_code=True`. Everything is first
    written to a temporary sibling folder and then moved into place entry by entry, `model_index.json`
    last, so an interrupted save never leaves a half-written model behind a valid index.
    `extra_files` maps relative paths to bytes (e.g. the model card, sample grids).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".pipeline-tmp-", dir=output_dir))
    try:
        plain = as_ddpm_pipeline(pipeline)
        if plain is not None:
            plain.save_pretrained(staging, safe_serialization=True)
        else:
            save_with_code(pipeline, staging)
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
        if plain is not None:  # an earlier save's code, which this index no longer names
            (output_dir / f"{CUSTOM_PIPELINE_MODULE}.py").unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def run_files(card: ModelCard, sample_grid: bytes, loss_curve: bytes | None, summary: dict) -> dict[str, bytes]:
    """The files a trained pipeline folder holds beside the pipeline (the `extra_files` of
    `save_pipeline_folder`): the model card, the sample grid, the loss curve where there is one, and
    `training_summary.json`, which lets the card be rendered again."""
    files = {
        SAMPLE_GRID: sample_grid,
        "README.md": str(card).encode(),
        "training_summary.json": json.dumps(summary, indent=2, allow_nan=False).encode(),
    }
    return files | ({LOSS_CURVE: loss_curve} if loss_curve is not None else {})


def push_patterns(index: dict) -> tuple[list[str], list[str]]:
    """(allow, delete) patterns: the pipeline's own files; stale files in its own folders are deleted."""
    folders = [*pipeline_components(index), "samples"]
    files = ["model_index.json", "README.md", LOSS_CURVE]
    delete = [f"{name}/*" for name in folders]
    if isinstance(index.get("_class_name"), list):
        files.append(f"{index['_class_name'][0]}.py")
    else:  # the code an earlier push of a model with its own code left in the repo
        delete.append(f"{CUSTOM_PIPELINE_MODULE}.py")
    return files + [f"{name}/*" for name in folders], delete


def publishable_files(folder: str | os.PathLike) -> list[str]:
    """Check `folder` is a pipeline folder ready to publish and list the files a push uploads."""
    folder = Path(folder)
    index = read_model_index(folder)
    allow, _ = push_patterns(index)
    refuse_links(folder, allow)
    class_name = index.get("_class_name")
    if isinstance(class_name, list) and not (folder / f"{class_name[0]}.py").is_file():
        raise UserInputError(f"{folder}/model_index.json names custom code {class_name[0]}.py, which is missing")
    for component in pipeline_components(index):
        check_weights(folder, component)
    readme = folder / "README.md"
    if not readme.is_file():
        logger.warning("%s has no README.md: the repo will have no model card", folder)
    elif not is_utf8(readme):
        raise UserInputError(f"{readme} is not UTF-8 text, so the Hub cannot show it as the model card")
    every_file = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    return list(filter_repo_objects(every_file, allow_patterns=allow, ignore_patterns=PUSH_IGNORE_PATTERNS))


def is_utf8(path: Path) -> bool:
    """Whether the file at `path` decodes as UTF-8."""
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return False
    return True


def refuse_links(folder: Path, allow: list[str]) -> None:
    """Refuse a symbolic link among what a push would upload: a link could publish any file it points at
    (a token, a key) from outside the folder. Links in places never uploaded (checkpoints, logs) may stay."""
    for root, dirs, files in os.walk(folder):  # links to folders are listed, not followed
        for path in sorted(Path(root, name) for name in dirs + files if Path(root, name).is_symlink()):
            relative = path.relative_to(folder).as_posix()
            inside = [f"{relative}/file" if path.is_dir() else relative]
            if list(filter_repo_objects(inside, allow_patterns=allow, ignore_patterns=PUSH_IGNORE_PATTERNS)):
                raise UserInputError(
                    f"{path} is a symbolic link; push uploads real files only, so a link cannot publish what it "
                    "points at: replace it with a copy of the file"
                )


def check_push_target(repo_id: str, revision: str | None) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise UserInputError(f"invalid repo id {repo_id!r}: {str(error).splitlines()[0]}") from None
    if revision is not None and (re.fullmatch(r"[0-9a-f]{40}", revision) or revision.startswith("refs/")):
        raise UserInputError(f"--revision must name a branch to push to, not {revision!r}")


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

    Only the pipeline's files go (model_index.json, pipeline.py, README.md, loss.png, its component folders
    and samples/); checkpoints, logs, optimizer state, pickles and hidden folders never do. `revision` is a
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

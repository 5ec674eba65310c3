"""The Hugging Face Hub: downloading a pipeline (one snapshot, no pickles) and Hub errors as one line."""

from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    HTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from ddpm_zoo.errors import UserInputError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# from_pretrained's arguments that are about fetching a snapshot, handed to `snapshot_download`.
DOWNLOAD_OPTIONS = ("cache_dir", "local_files_only", "force_download", "proxies")


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


def download_pipeline(name_or_path: str, revision: str | None = None, token: str | None = None, **options) -> Path:
    """A local folder for a folder path or a Hub repo id (one snapshot of `revision`, pickles skipped);
    `options` are `snapshot_download`'s (DOWNLOAD_OPTIONS)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    try:
        validate_repo_id(name_or_path)
        folder = snapshot_download(
            name_or_path,
            revision=revision,
            token=token,
            ignore_patterns=[f"*{s}" for s in PICKLE_SUFFIXES],
            **options,
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

"""Push to and pull from a Hub-compatible loopback server with the real huggingface_hub and diffusers clients."""

import argparse
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BLOCK_DDPM_ZOO, launch, tiny_training_args, tiny_unet, write_tiny_unet_config
from diffusers import DDPMScheduler
from hub_server import OTHER_TOKEN, TEST_TOKEN, TEST_USER, HubServer
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image

from ddpm_zoo import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.cards import TrainingSummary, render_model_card
from ddpm_zoo.commands.push import add_parser
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.publish import publishable_files, push_pipeline_folder, save_pipeline_folder

pytest_plugins = ["hub_server"]
# huggingface_hub's own basic-LFS PUT passes `data=<file>` to httpx2, which warns; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

PIPELINE_FILES = {
    "README.md",
    "model_index.json",
    "pipeline.py",
    "samples/grid.png",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
}
# An unconditional, unguided model is published as diffusers' own DDPMPipeline, with no code.
PLAIN_FILES = PIPELINE_FILES - {"pipeline.py"}
CLASS_NAMES = ("zero", "one", "two")


def tiny_pipeline(conditional: bool):
    if conditional:
        unet = tiny_unet(channels=3, num_class_embeds=len(CLASS_NAMES) + 1)
        return ClassConditionalDDPMPipeline(unet, DDPMScheduler(), class_names=",".join(CLASS_NAMES))
    return UnconditionalDDPMPipeline(tiny_unet(channels=1), DDPMScheduler())


def tiny_summary(conditional: bool) -> TrainingSummary:
    return TrainingSummary(
        preset="colored-mnist" if conditional else "mnist-tiny",
        conditional=conditional,
        dataset="mnist-5k",
        resolution=8,
        max_train_steps=3,
        total_batch_size=4,
        learning_rate=1e-3,
        mixed_precision="no",
        hardware="1 x CPU",
        wall_time_s=2.0,
        final_loss=0.5,
        class_names=CLASS_NAMES if conditional else (),
    )


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def add_training_leftovers(folder: Path) -> None:
    """What a training run leaves beside the pipeline: none of it may be uploaded."""
    leftovers = {
        "checkpoint-3/model.safetensors": b"weights",
        "checkpoint-3/optimizer.bin": b"optimizer state",
        "checkpoint-3/random_states_0.pkl": b"rng",
        "logs/train/events.out.tfevents.1": b"log",
        ".pipeline-tmp-abc/model_index.json": b"{}",
        "unet/diffusion_pytorch_model.bin": b"pickle",
        "progress/step-0000003.png": png_bytes(),
        "training_summary.json": b"{}",
    }
    for relative, content in leftovers.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(content)


def saved_folder(root: Path, conditional: bool, repo_id: str | None, pipeline=None) -> tuple[Path, str]:
    """A pipeline folder as training leaves it (card, grid, leftovers); returns it and the card text."""
    card = str(render_model_card(tiny_summary(conditional), repo_id))
    extra = {"README.md": card.encode(), "samples/grid.png": png_bytes()}
    folder = save_pipeline_folder(pipeline or tiny_pipeline(conditional), root / "model", extra_files=extra)
    add_training_leftovers(folder)
    return folder, card


def repo_files(server: HubServer, repo_id: str, revision: str = "main") -> set[str]:
    return set(server.repos[("model", repo_id)].resolve(revision).files) - {".gitattributes"}


def run_python(code: str, env: dict, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=150
    )


def card_snippet(card: str) -> str:
    """The card's "How to use" code, with few denoising steps so it runs in seconds (the calls that leave the
    count to the pipeline get one too)."""
    code = re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)
    code = re.sub(r"num_inference_steps=\d+", "num_inference_steps=2", code)
    return re.sub(r"\bpipe\((?![^\n]*num_inference_steps)", "pipe(num_inference_steps=2, ", code)


def run_card_snippet(server: HubServer, card: str, tmp_path: Path, token: str | None = None) -> str:
    """Run the card's snippet in a fresh process that cannot import ddpm_zoo, against the loopback Hub."""
    script = BLOCK_DDPM_ZOO + card_snippet(card) + "\nprint('IMAGES', len(images), images[0].size)\n"
    result = run_python(script, server.client_env(tmp_path / "pull-home", token=token), tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def unet_checksum(pipeline) -> float:
    return sum(p.double().sum().item() for p in pipeline.unet.parameters())


@pytest.mark.slow
def test_unconditional_push_then_pull_in_a_fresh_process(hub_server, tmp_path):
    folder, card = saved_folder(tmp_path, conditional=False, repo_id=f"{TEST_USER}/tiny-digits")
    commit = push_pipeline_folder(folder, "tiny-digits", token=TEST_TOKEN)
    shutil.rmtree(folder)

    repo = hub_server.repos[("model", f"{TEST_USER}/tiny-digits")]
    assert repo.branches["main"] == commit and not repo.private
    assert repo_files(hub_server, f"{TEST_USER}/tiny-digits") == PLAIN_FILES
    assert repo.commits[commit].files["unet/diffusion_pytorch_model.safetensors"].lfs
    assert ("POST", f"/{TEST_USER}/tiny-digits.git/info/lfs/objects/batch") in hub_server.requests
    assert run_card_snippet(hub_server, card, tmp_path) == "IMAGES 4 (8, 8)"
    assert not [path for method, path in hub_server.requests if "xet" in path]


@pytest.mark.slow
def test_conditional_push_then_pull_with_class_labels(hub_server, tmp_path):
    folder, card = saved_folder(tmp_path, conditional=True, repo_id=f"{TEST_USER}/colored")
    push_pipeline_folder(folder, f"{TEST_USER}/colored", token=TEST_TOKEN)
    shutil.rmtree(folder)

    assert 'class_labels=["two", "zero"], guidance_scale=3.0' in card
    assert "DPMSolverMultistepScheduler.from_config" in card
    assert run_card_snippet(hub_server, card, tmp_path) == "IMAGES 2 (8, 8)"


@pytest.mark.slow
def test_private_repo_is_refused_to_anonymous_clients(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=True, repo_id=f"{TEST_USER}/secret")
    push_pipeline_folder(folder, f"{TEST_USER}/secret", private=True, token=TEST_TOKEN)

    assert HfApi(token=TEST_TOKEN).model_info(f"{TEST_USER}/secret").private
    for token in (False, OTHER_TOKEN):
        with pytest.raises(RepositoryNotFoundError):
            HfApi(token=token).model_info(f"{TEST_USER}/secret")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{TEST_USER}/secret", "model_index.json", token=False)
    pull = BLOCK_DDPM_ZOO + (
        "from diffusers import DiffusionPipeline\n"
        "DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
    )
    result = run_python(pull, hub_server.client_env(tmp_path / "anonymous"), tmp_path, f"{TEST_USER}/secret")
    assert result.returncode != 0 and "RepositoryNotFoundError" in result.stderr

    public_folder, _ = saved_folder(tmp_path / "public", conditional=False, repo_id=None)
    push_pipeline_folder(public_folder, f"{TEST_USER}/open", token=TEST_TOKEN)
    with pytest.raises(UserInputError, match="already exists and is public"):
        push_pipeline_folder(public_folder, f"{TEST_USER}/open", private=True, token=TEST_TOKEN)


PIN_SCRIPT = """
import json, sys
from diffusers import DiffusionPipeline
from ddpm_zoo.loading import load_pipeline
repo, first = sys.argv[1], sys.argv[2]
checksum = lambda pipe: sum(p.double().sum().item() for p in pipe.unet.parameters())
own = load_pipeline(repo, revision=first)
print(json.dumps({
    "main": checksum(DiffusionPipeline.from_pretrained(repo, trust_remote_code=True)),
    "first": checksum(DiffusionPipeline.from_pretrained(repo, trust_remote_code=True, revision=first)),
    "own_first": checksum(own),
    "own_class": type(own).__module__ + "." + type(own).__name__,
}))
"""


@pytest.mark.slow
def test_second_push_updates_the_repo_and_revision_pins_the_first(hub_server, tmp_path):
    repo_id = f"{TEST_USER}/versions"
    first_pipeline = tiny_pipeline(conditional=False)
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=repo_id, pipeline=first_pipeline)
    (folder / "samples" / "old.png").write_bytes(png_bytes())
    first = push_pipeline_folder(folder, repo_id, token=TEST_TOKEN)
    first_sum = unet_checksum(first_pipeline)

    second_pipeline = tiny_pipeline(conditional=False)
    with torch.no_grad():
        for parameter in second_pipeline.unet.parameters():
            parameter.add_(0.01)
    shutil.rmtree(folder)
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=repo_id, pipeline=second_pipeline)
    second = push_pipeline_folder(folder, repo_id, token=TEST_TOKEN, commit_message="Retrained")
    shutil.rmtree(folder)

    assert second != first
    commits = HfApi(token=TEST_TOKEN).list_repo_commits(repo_id)
    assert [c.commit_id for c in commits[:2]] == [second, first] and commits[0].title == "Retrained"
    assert "samples/old.png" in repo_files(hub_server, repo_id, first)
    assert repo_files(hub_server, repo_id) == PLAIN_FILES

    result = run_python(PIN_SCRIPT, hub_server.client_env(tmp_path / "pin-home"), tmp_path, repo_id, first)
    assert result.returncode == 0, result.stderr[-3000:]
    sums = json.loads(result.stdout.strip().splitlines()[-1])
    assert sums["first"] == pytest.approx(first_sum) and sums["own_first"] == pytest.approx(first_sum)
    assert sums["main"] == pytest.approx(unet_checksum(second_pipeline)) != pytest.approx(first_sum)
    assert sums["own_class"] == "ddpm_zoo.pipelines.pipeline_ddpm_zoo.UnconditionalDDPMPipeline"


def test_push_to_a_new_branch_leaves_main_alone(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    commit = push_pipeline_folder(folder, f"{TEST_USER}/branched", token=TEST_TOKEN, revision="step-3")

    repo = hub_server.repos[("model", f"{TEST_USER}/branched")]
    assert repo.branches["step-3"] == commit
    assert set(repo.resolve("main").files) == {".gitattributes"}
    path = hf_hub_download(f"{TEST_USER}/branched", "model_index.json", revision="step-3", token=TEST_TOKEN)
    assert json.loads(Path(path).read_text())["_class_name"] == "DDPMPipeline"


def test_publishable_files_are_the_pipeline_only(tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=True, repo_id=None)
    assert set(publishable_files(folder)) == PIPELINE_FILES


def test_folders_that_cannot_be_published_are_refused(tmp_path):
    with pytest.raises(UserInputError, match="is not a folder"):
        publishable_files(tmp_path / "missing")
    with pytest.raises(UserInputError, match="no model_index.json"):
        publishable_files(tmp_path)
    folder, _ = saved_folder(tmp_path, conditional=True, repo_id=None)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(UserInputError, match="only pickle weights .*diffusion_pytorch_model.bin"):
        publishable_files(folder)
    (folder / "unet" / "diffusion_pytorch_model.bin").unlink()
    (folder / "pipeline.py").unlink()
    with pytest.raises(UserInputError, match="pipeline.py, which is missing"):
        publishable_files(folder)
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(UserInputError, match="holds a JSON list, not a pipeline index"):
        publishable_files(folder)


@pytest.mark.parametrize(
    ("repo_id", "revision", "message"),
    [("bad//id", None, "invalid repo id"), (f"{TEST_USER}/x", "a" * 40, "must name a branch")],
)
def test_bad_push_targets_are_refused_before_any_upload(tmp_path, repo_id, revision, message):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    with pytest.raises(UserInputError, match=message):
        push_pipeline_folder(folder, repo_id, revision=revision, token=TEST_TOKEN)


def test_push_without_a_token_is_one_line_with_a_hint(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    with pytest.raises(UserInputError, match=r"\(401\).*HF_TOKEN") as error:
        push_pipeline_folder(folder, f"{TEST_USER}/anonymous", token=False)
    assert "\n" not in str(error.value)


def test_push_command_keeps_the_token_out_of_output_files_and_logs(hub_server, tmp_path, capsys, caplog):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    parser = argparse.ArgumentParser(prog="ddpm-zoo")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["push", str(folder), f"{TEST_USER}/cli", "--private", "--commit-message", "From the CLI"]
        + ["--token", TEST_TOKEN]
    )
    with caplog.at_level(logging.DEBUG):
        assert args.func(args) == 0

    out, err = capsys.readouterr()
    head = hub_server.repos[("model", f"{TEST_USER}/cli")].resolve("main")
    assert head.oid in out and head.title == "From the CLI"
    assert hub_server.repos[("model", f"{TEST_USER}/cli")].private
    written = [p.read_bytes() for root in (folder, hub_server.root) for p in root.rglob("*") if p.is_file()]
    assert not [text for text in (out, err, caplog.text) if TEST_TOKEN in text]
    assert not [content for content in written if TEST_TOKEN.encode() in content]


@pytest.mark.slow
def test_ddpm_zoo_push_command_line(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    env = hub_server.client_env(tmp_path / "cli-home", token=TEST_TOKEN, disable_xet=True)
    command = [sys.executable, "-m", "ddpm_zoo.commands.main", "push", str(folder), f"{TEST_USER}/from-cli"]
    result = subprocess.run(command + ["--revision", "v1"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert repo_files(hub_server, f"{TEST_USER}/from-cli", "v1") == PLAIN_FILES

    result = subprocess.run(
        [*command[:4], str(tmp_path / "nowhere"), "x/y"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0


def test_default_xet_client_pushes_inline_files_and_needs_the_switch_for_lfs(tmp_path, monkeypatch):
    """huggingface_hub 2.x picks Xet for LFS files without asking the server; HF_HUB_DISABLE_XET turns it off."""
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    inline = HubServer(tmp_path / "inline-hub", regular_uploads=True).start()
    lfs_only = HubServer(tmp_path / "lfs-hub").start()
    try:
        inline.patch_client(monkeypatch, tmp_path / "home", disable_xet=False)
        commit = push_pipeline_folder(folder, f"{TEST_USER}/inline", token=TEST_TOKEN)
        assert repo_files(inline, f"{TEST_USER}/inline", commit) == PLAIN_FILES
        assert not [path for _, path in inline.requests if "lfs" in path or "xet" in path]
        snapshot = Path(snapshot_download(f"{TEST_USER}/inline", token=TEST_TOKEN))
        assert (snapshot / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == (
            folder / "unet" / "diffusion_pytorch_model.safetensors"
        ).read_bytes()

        lfs_only.patch_client(monkeypatch, tmp_path / "home", disable_xet=False)
        with pytest.raises(Exception, match="xet-write-token"):
            push_pipeline_folder(folder, f"{TEST_USER}/xet", token=TEST_TOKEN)
    finally:
        inline.stop()
        lfs_only.stop()


TRAINED_PULL = (
    BLOCK_DDPM_ZOO
    + """
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
sizes = pipe.config.cluster_sizes
print(type(pipe).__name__, images.shape, pipe.guide_unet, len(sizes), sum(sizes), pipe.config.self_guidance_scale)
"""
)


@pytest.mark.slow
def test_train_push_delete_pull(hub_server, tmp_path):
    """The README's journey: train with --push_to_hub, lose the local folder, pull it back with plain diffusers.
    Two processes: the main one creates the repo before the first step and tells the other (broadcast)."""
    output = tmp_path / "run"
    args = tiny_training_args(output, write_tiny_unet_config(tmp_path), steps=3)
    args += ["--push_to_hub", "--hub_model_id", f"{TEST_USER}/trained", "--hub_token", TEST_TOKEN]
    env = hub_server.client_env(tmp_path / "train-home", disable_xet=True)
    result = launch("train_unconditional.py", args, num_processes=2, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert TEST_TOKEN not in result.stdout + result.stderr

    uploaded = repo_files(hub_server, f"{TEST_USER}/trained")
    assert {"model_index.json", "pipeline.py", "unet/diffusion_pytorch_model.safetensors"} <= uploaded
    repo = hub_server.repos[("model", f"{TEST_USER}/trained")]
    index = json.loads(hub_server.read(repo.resolve("main").files["model_index.json"]))
    assert len(index["cluster_sizes"]) == 50 and sum(index["cluster_sizes"]) == 5000  # mnist-tiny's self-guidance
    card = hub_server.read(repo.resolve("main").files["README.md"]).decode()
    assert f'from_pretrained("{TEST_USER}/trained", trust_remote_code=True)' in card
    assert not [p for p in uploaded if p.startswith(("checkpoint-", "logs/")) or p.endswith((".bin", ".pkl"))]
    shutil.rmtree(output)

    pull = run_python(TRAINED_PULL, hub_server.client_env(tmp_path / "pull-home"), tmp_path, f"{TEST_USER}/trained")
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert pull.stdout.strip().splitlines()[-1] == "UnconditionalDDPMPipeline (2, 8, 8, 1) None 50 5000 3.0"


CONCURRENT_PULL = (
    BLOCK_DDPM_ZOO
    + """
import torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
print(sum(p.double().sum().item() for p in pipe.unet.parameters()))
"""
)


@pytest.mark.slow
def test_concurrent_pulls_of_one_repo_share_the_cache_safely(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=f"{TEST_USER}/popular")
    pipeline = tiny_pipeline(conditional=False)
    push_pipeline_folder(folder, f"{TEST_USER}/popular", token=TEST_TOKEN)
    env = hub_server.client_env(tmp_path / "shared-home")
    pulls = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_PULL, f"{TEST_USER}/popular"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [pull.communicate(timeout=150) for pull in pulls]
    assert [pull.returncode for pull in pulls] == [0] * 4, [err[-2000:] for _, err in outputs]
    expected = unet_checksum(pipeline)
    assert all(float(out.strip().splitlines()[-1]) == pytest.approx(expected) for out, _ in outputs)


def test_an_unreachable_hub_is_one_line_and_leaves_the_folder(tmp_path, monkeypatch):
    from huggingface_hub import constants

    folder, card = saved_folder(tmp_path, conditional=False, repo_id=None)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(
        UserInputError, match=r"cannot reach the Hub at http://127.0.0.1:9 to push to tester/x"
    ) as error:
        push_pipeline_folder(folder, f"{TEST_USER}/x", token=TEST_TOKEN)
    assert "\n" not in str(error.value) and (folder / "README.md").read_text() == card
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError, match="cannot reach the Hub .*offline"):
        push_pipeline_folder(folder, f"{TEST_USER}/x", token=TEST_TOKEN)


def test_a_push_to_another_repo_retargets_the_card_and_keeps_its_results(hub_server, tmp_path):
    from huggingface_hub import EvalResult, ModelCard

    from ddpm_zoo.cards import refresh_model_card

    folder, _ = saved_folder(tmp_path, conditional=False, repo_id="old-name")
    summary = {"card": dataclasses.asdict(tiny_summary(False)), "hub_model_id": "old-name"}
    (folder / "training_summary.json").write_text(json.dumps(summary))
    result = EvalResult(
        task_type="unconditional-image-generation",
        dataset_type="mnist-5k",
        dataset_name="mnist-5k",
        metric_type="recognisability",
        metric_value=0.94,
    )
    refresh_model_card(folder, [result])
    push_pipeline_folder(folder, f"{TEST_USER}/renamed", token=TEST_TOKEN)

    repo = hub_server.repos[("model", f"{TEST_USER}/renamed")]
    uploaded = hub_server.read(repo.resolve("main").files["README.md"]).decode()
    assert uploaded == (folder / "README.md").read_text()
    assert f'from_pretrained("{TEST_USER}/renamed"' in uploaded and "old-name" not in uploaded
    assert ModelCard(uploaded).data.eval_results[0].metric_value == 0.94
    assert json.loads((folder / "training_summary.json").read_text())["hub_model_id"] == f"{TEST_USER}/renamed"


@pytest.mark.slow
def test_cli_errors_are_one_line_without_request_logs(hub_server, tmp_path):
    """A refused push prints only the error line: huggingface_hub 2.x logs each request through httpx2."""
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    env = hub_server.client_env(tmp_path / "cli-home", disable_xet=True)
    command = [sys.executable, "-m", "ddpm_zoo.commands.main", "push", str(folder), f"{TEST_USER}/anonymous"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: pushing to {TEST_USER}/anonymous failed (401): Invalid username or password; log in with "
        "`hf auth login` or set HF_TOKEN to a token with write access"
    ]


@pytest.mark.slow
def test_sampling_a_cached_repo_works_offline(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    push_pipeline_folder(folder, f"{TEST_USER}/cached", token=TEST_TOKEN)
    env = hub_server.client_env(tmp_path / "sample-home", disable_xet=True)
    command = [sys.executable, "-m", "ddpm_zoo.commands.main", "sample", f"{TEST_USER}/cached", "--num_images", "1"]
    command += ["--num_inference_steps", "1", "--device", "cpu", "--output_dir"]
    online = subprocess.run([*command, str(tmp_path / "a")], env=env, capture_output=True, text=True, timeout=120)
    assert online.returncode == 0, online.stderr[-3000:]
    env["HF_HUB_OFFLINE"] = "1"
    offline = subprocess.run([*command, str(tmp_path / "b")], env=env, capture_output=True, text=True, timeout=120)
    assert offline.returncode == 0, offline.stderr[-3000:]
    assert (tmp_path / "b" / "grid.png").exists()
    missing = subprocess.run(
        [*command[:4], f"{TEST_USER}/never-pulled", *command[5:], str(tmp_path / "c")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert "no complete copy is in the local cache" in missing.stderr


@pytest.mark.slow
def test_training_checks_the_push_target_before_its_first_step(tmp_path):
    output = tmp_path / "run"
    args = tiny_training_args(output, write_tiny_unet_config(tmp_path), steps=3)
    args += ["--push_to_hub", "--hub_model_id", f"{TEST_USER}/never", "--hub_token", TEST_TOKEN]
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    script = Path(__file__).parents[1] / "train_unconditional.py"
    result = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Hub at http://127.0.0.1:9")
    assert not list(output.glob("checkpoint-*")) and not (output / "model_index.json").exists()


def test_a_repo_the_token_cannot_write_is_refused_before_training(hub_server, tmp_path):
    """create_repo(exist_ok=True) accepts someone else's existing repo; the write check must not."""
    from ddpm_zoo.publish import create_push_repo

    HfApi(token=OTHER_TOKEN).create_repo("someone-else/theirs")
    with pytest.raises(UserInputError, match=r"someone-else/theirs exists, and tester's token cannot write to it"):
        create_push_repo("someone-else/theirs", token=TEST_TOKEN)
    assert create_push_repo("mine", token=TEST_TOKEN) == f"{TEST_USER}/mine"


def test_a_hand_edited_card_is_pushed_as_it_is(hub_server, tmp_path):
    folder, _ = saved_folder(tmp_path, conditional=False, repo_id=None)
    summary = {"card": dataclasses.asdict(tiny_summary(False)), "hub_model_id": None}
    (folder / "training_summary.json").write_text(json.dumps(summary))
    edited = (folder / "README.md").read_text() + "\nMy own notes.\n"
    (folder / "README.md").write_text(edited)
    push_pipeline_folder(folder, f"{TEST_USER}/edited", token=TEST_TOKEN)
    repo = hub_server.repos[("model", f"{TEST_USER}/edited")]
    assert hub_server.read(repo.resolve("main").files["README.md"]).decode() == edited
    assert (folder / "README.md").read_text() == edited

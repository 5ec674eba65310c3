"""--hub_strategy checkpoint: each checkpoint's pipeline reaches the Hub as a branch step-N, in the background."""

import json

import pytest
from conftest import launch, tiny_training_args, write_tiny_unet_config
from hub_server import TEST_TOKEN, TEST_USER

from ddpm_zoo.config import TrainingConfig, validate
from ddpm_zoo.errors import UserInputError

pytest_plugins = ["hub_server"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


def test_hub_strategy_needs_push_to_hub():
    with pytest.raises(UserInputError, match="--hub_strategy checkpoint pushes to the Hub: add --push_to_hub"):
        validate(TrainingConfig(hub_strategy="checkpoint", max_train_steps=3))


@pytest.mark.slow
def test_checkpoints_push_step_branches_and_the_end_pushes_main(hub_server, tmp_path):
    repo_id = f"{TEST_USER}/snapshots"
    args = tiny_training_args(tmp_path / "run", write_tiny_unet_config(tmp_path), steps=6)
    args += ["--self_guidance_clusters", "0", "--push_to_hub", "--hub_model_id", repo_id, "--hub_token", TEST_TOKEN]
    env = hub_server.client_env(tmp_path / "train-home", disable_xet=True)
    result = launch("train_unconditional.py", [*args, "--hub_strategy", "checkpoint"], env=env, timeout=280)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "was not pushed" not in result.stdout + result.stderr

    repo = hub_server.repos[("model", repo_id)]
    assert {"step-3", "main"} <= set(repo.branches)
    snapshot = set(repo.resolve("step-3").files) - {".gitattributes"}
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "samples/grid.png", "README.md"} <= snapshot
    assert not [p for p in snapshot if "optimizer" in p or "random_states" in p or p.endswith((".bin", ".pkl"))]
    assert not [p for p in snapshot if p.startswith("checkpoint-")]
    index = json.loads(hub_server.read(repo.resolve("main").files["model_index.json"]))
    assert index["_class_name"] == "DDPMPipeline"
    summary = json.loads((tmp_path / "run" / "training_summary.json").read_text())
    assert summary["global_step"] == 6
    assert repo.resolve("step-3").files["unet/diffusion_pytorch_model.safetensors"].sha256 != (
        repo.resolve("main").files["unet/diffusion_pytorch_model.safetensors"].sha256
    )

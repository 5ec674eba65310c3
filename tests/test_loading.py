"""Loading without running downloaded code: the installed classes' own `from_pretrained` and
`ddpm_zoo.loading.load_pipeline` read ddpm-zoo folders and Hub repos into the installed classes, with diffusers'
keyword arguments; plain diffusers still needs `trust_remote_code` for them."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from conftest import BLOCK_DDPM_ZOO, tiny_unet
from diffusers import DDPMScheduler, DiffusionPipeline
from hub_server import TEST_TOKEN, TEST_USER
from safetensors.torch import load_file

from ddpm_zoo.cards import TrainingSummary, render_model_card
from ddpm_zoo.commands.main import main
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.publish import push_pipeline_folder, save_pipeline_folder

pytest_plugins = ["hub_server"]
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"
# A pipeline.py that leaves a mark and fails if anything runs it.
BOOBY_TRAP = "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('ran')\nraise SystemExit('ran')\n"


def trapped_folder(root, conditional: bool = False):
    """A saved ddpm-zoo folder whose pipeline.py must never run."""
    if conditional:
        unet = tiny_unet(channels=3, num_class_embeds=3)
        pipeline = ClassConditionalDDPMPipeline(unet, DDPMScheduler(num_train_timesteps=10), class_names="a,b")
    else:
        guide = tiny_unet()  # autoguided: a model that needs its own pipeline code
        pipeline = UnconditionalDDPMPipeline(
            tiny_unet(), DDPMScheduler(num_train_timesteps=10), guide_unet=guide, autoguidance_scale=2.0
        )
    folder = save_pipeline_folder(pipeline, root / "model")
    (folder / "pipeline.py").write_text(BOOBY_TRAP)
    return folder


@pytest.mark.parametrize("cls", [UnconditionalDDPMPipeline, ClassConditionalDDPMPipeline])
def test_the_installed_classes_load_a_folder_without_running_its_code(tmp_path, cls):
    folder = trapped_folder(tmp_path, conditional=cls is ClassConditionalDDPMPipeline)
    pipeline = cls.from_pretrained(folder)
    assert type(pipeline) is cls and not (folder / "RAN").exists()
    saved = load_file(folder / WEIGHTS)
    assert all(torch.equal(saved[name], tensor) for name, tensor in pipeline.unet.state_dict().items())


def test_plain_diffusers_asks_for_trust_remote_code(tmp_path):
    folder = trapped_folder(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        DiffusionPipeline.from_pretrained(folder)
    assert not (folder / "RAN").exists()


FROM_THE_HUB = """
import json, sys
from ddpm_zoo.pipelines import UnconditionalDDPMPipeline
pipe = UnconditionalDDPMPipeline.from_pretrained(sys.argv[1])
dynamic = sorted(name for name in sys.modules if name.startswith("diffusers_modules"))
print(json.dumps({"class": type(pipe).__module__ + "." + type(pipe).__name__, "dynamic": dynamic}))
"""


@pytest.mark.slow
def test_the_installed_class_loads_a_hub_repo_without_running_its_code(hub_server, tmp_path):
    folder = trapped_folder(tmp_path)
    push_pipeline_folder(folder, f"{TEST_USER}/trapped", token=TEST_TOKEN)
    env = hub_server.client_env(tmp_path / "client-home")
    result = subprocess.run(
        [sys.executable, "-c", FROM_THE_HUB, f"{TEST_USER}/trapped"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == {"class": "ddpm_zoo.pipelines.pipeline_ddpm_zoo.UnconditionalDDPMPipeline", "dynamic": []}
    assert not list((tmp_path / "client-home").rglob("RAN"))


def test_load_pipeline_forwards_torch_dtype(tmp_path):
    pipeline = load_pipeline(str(trapped_folder(tmp_path)), "cpu", torch_dtype=torch.bfloat16)
    assert pipeline.unet.dtype == torch.bfloat16


def test_load_pipeline_forwards_variant(tmp_path):
    folder = unguided_folder(tmp_path)
    zeros = tiny_unet()
    with torch.no_grad():
        for parameter in zeros.parameters():
            parameter.zero_()
    zeros.save_pretrained(folder / "unet", variant="fp16")
    pipeline = load_pipeline(str(folder), "cpu", variant="fp16")
    assert all(not parameter.any() for parameter in pipeline.unet.parameters())
    assert any(parameter.any() for parameter in load_pipeline(str(folder), "cpu").unet.parameters())


def test_load_pipeline_forwards_local_files_only(hub_server, tmp_path):
    push_pipeline_folder(trapped_folder(tmp_path), f"{TEST_USER}/uncached", token=TEST_TOKEN)
    with pytest.raises(UserInputError, match="no complete copy is in the local cache"):
        load_pipeline(f"{TEST_USER}/uncached", "cpu", local_files_only=True)
    assert type(load_pipeline(f"{TEST_USER}/uncached", "cpu")) is UnconditionalDDPMPipeline
    cached = load_pipeline(f"{TEST_USER}/uncached", "cpu", local_files_only=True)
    assert type(cached) is UnconditionalDDPMPipeline


PLAIN_DIFFUSERS = (
    BLOCK_DDPM_ZOO
    + """
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1])
images = pipe(batch_size=2, num_inference_steps=2, output_type="np").images
print(type(pipe).__name__, images.shape, sum(p.double().sum().item() for p in pipe.unet.parameters()))
"""
)


def unguided_folder(root):
    """An unconditional, unguided model with a fixed variance, saved over an earlier save that had code."""
    folder = root / "model"
    folder.mkdir()
    (folder / "pipeline.py").write_text(BOOBY_TRAP)
    return save_pipeline_folder(UnconditionalDDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=10)), folder)


def load_with_plain_diffusers(name: str, env: dict | None, cwd) -> list[str]:
    """`DiffusionPipeline.from_pretrained(name)`, no flag, in a process that cannot import ddpm_zoo."""
    command = [sys.executable, "-c", PLAIN_DIFFUSERS, name]
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1].split(" ", 1)


def checksum(pipeline) -> float:
    return sum(p.double().sum().item() for p in pipeline.unet.parameters())


def test_an_unguided_model_is_published_as_diffusers_ddpm_pipeline_and_loads_with_no_flag(tmp_path, capsys):
    folder = unguided_folder(tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline" and not (folder / "pipeline.py").exists()
    name, rest = load_with_plain_diffusers(str(folder), None, tmp_path)
    own = load_pipeline(str(folder), "cpu")
    assert name == "DDPMPipeline" and rest.startswith("(2, 8, 8, 1) ")
    assert float(rest.split(") ")[1]) == pytest.approx(checksum(own))
    assert type(own) is UnconditionalDDPMPipeline and type(UnconditionalDDPMPipeline.from_pretrained(folder)) is (
        UnconditionalDDPMPipeline
    )
    args = ["--num_images", "1", "--num_inference_steps", "1", "--output_dir", str(tmp_path / "samples")]
    assert main(["sample", str(folder), *args]) == 0 and (tmp_path / "samples" / "grid.png").exists()


@pytest.mark.parametrize(
    "change, flagless",
    [
        ({}, True),
        ({"self_guidance_clusters": 5, "self_guidance_scale": 2.0}, False),
        ({"variance_type": "learned_range"}, False),
        ({"conditional": True, "class_names": ("a", "b")}, False),
    ],
)
def test_the_card_shows_the_flagless_call_where_the_model_is_a_ddpm_pipeline(change, flagless):
    summary = TrainingSummary("mnist-tiny", False, "mnist-5k", 8, 3, 4, 1e-3, "no", "cpu", 2.0, 0.5)
    text = render_model_card(dataclasses.replace(summary, **change), "me/digits").text
    assert ('from_pretrained("me/digits")\n' in text) is flagless
    assert ('from_pretrained("me/digits", trust_remote_code=True)' in text) is not flagless
    assert ("pipeline.py" in text) is not flagless


@pytest.mark.slow
def test_an_unguided_hub_repo_loads_with_plain_diffusers_and_no_flag(hub_server, tmp_path):
    push_pipeline_folder(unguided_folder(tmp_path), f"{TEST_USER}/plain", token=TEST_TOKEN)
    env = hub_server.client_env(tmp_path / "client-home")
    name, rest = load_with_plain_diffusers(f"{TEST_USER}/plain", env, tmp_path)
    own = load_pipeline(f"{TEST_USER}/plain", "cpu")
    assert name == "DDPMPipeline" and type(own) is UnconditionalDDPMPipeline
    assert float(rest.split(") ")[1]) == pytest.approx(checksum(own))

"""Loading without running downloaded code: the installed classes' own `from_pretrained` and
`ddpm_zoo.loading.load_pipeline` read ddpm-zoo folders and Hub repos into the installed classes, with diffusers'
keyword arguments; plain diffusers still needs `trust_remote_code` for them."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import tiny_unet
from diffusers import DDPMScheduler, DiffusionPipeline
from hub_server import TEST_TOKEN, TEST_USER
from safetensors.torch import load_file

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
        pipeline = UnconditionalDDPMPipeline(tiny_unet(), DDPMScheduler(num_train_timesteps=10))
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
    folder = trapped_folder(tmp_path)
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

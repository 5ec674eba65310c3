"""Hostile or broken input (decoy weights, broken indexes, links out of a folder, decompression bombs, corrupt
cache entries, absurd option values) is one `error:` line and a non-zero exit, and nothing on disk is lost."""

import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from conftest import OFFLINE_VARIABLES, launch, tiny_unet
from diffusers import DDPMScheduler
from PIL import Image
from safetensors.torch import load_file, save_file

from ddpm_zoo import data
from ddpm_zoo.commands.main import main
from ddpm_zoo.data import load_mnist_5k_arrays
from ddpm_zoo.errors import DataError, UserInputError
from ddpm_zoo.evaluation.references import Reference, reference_digit_statistics
from ddpm_zoo.loading import load_pipeline
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.publish import publishable_files, save_pipeline_folder

BOMB_SIDE = 20_000  # 400 million pixels: past twice PIL's default limit, so opening raises DecompressionBombError


def saved_folder(root: Path) -> Path:
    return save_pipeline_folder(UnconditionalDDPMPipeline(tiny_unet(), DDPMScheduler()), root / "model")


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_bomb_png(path: Path, side: int = BOMB_SIDE) -> None:
    """A small file whose PNG header claims a `side` x `side` grayscale image (PIL checks the size on open)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b"")
    )


def image_folder(root: Path, count: int = 3) -> Path:
    root.mkdir(parents=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / f"{i}.png")
    return root


def test_a_decoy_safetensors_beside_a_pickle_is_refused_not_loaded(tmp_path, capsys):
    folder = saved_folder(tmp_path)
    unet = folder / "unet"
    torch.save({name: torch.full_like(value, 7.0) for name, value in tiny_unet().state_dict().items()}, unet / "a.bin")
    (unet / "diffusion_pytorch_model.bin").write_bytes((unet / "a.bin").read_bytes())
    (unet / "diffusion_pytorch_model.safetensors").rename(unet / "decoy.safetensors")
    assert main(["sample", str(folder), "--output_dir", str(tmp_path / "samples")]) == 2
    assert "only pickle weights (a.bin, diffusion_pytorch_model.bin)" in one_error_line(capsys)
    assert main(["push", str(folder), "someone/decoy"]) == 2
    assert "only pickle weights" in one_error_line(capsys)


def test_a_model_folder_with_only_a_decoy_safetensors_is_one_error_line(tmp_path, capsys):
    folder = saved_folder(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "decoy.safetensors")
    assert main(["sample", str(folder), "--output_dir", str(tmp_path / "samples")]) == 2
    assert "unet has no diffusion_pytorch_model.safetensors" in one_error_line(capsys)


def test_the_loader_reads_the_safetensors_weights_never_a_pickle_beside_them(tmp_path):
    folder = saved_folder(tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors at all")
    torch.save(tiny_unet().state_dict(), folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UserInputError, match="cannot load the folder .*diffusion_pytorch_model.safetensors"):
        load_pipeline(str(folder), "cpu")


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"_class_name": "\xff\xfe"}', "is not UTF-8 text"),
        (b"[" * 5000 + b"]" * 5000, "nests too deeply"),
        (b'{"_class_name": []}', r"_class_name must be a class name or \[module, class name\], not \[\]"),
        (b'{"_class_name": ["pipeline", 3]}', "_class_name must be a class name"),
        (b'{"_class_name": {"a": 1}}', "_class_name must be a class name"),
    ],
    ids=["not-utf8", "deep", "empty-list", "not-a-name", "dict"],
)
def test_a_broken_model_index_is_one_error_line_for_every_command(tmp_path, capsys, content, message):
    folder = saved_folder(tmp_path)
    (folder / "model_index.json").write_bytes(content)
    for command in (["sample", str(folder), "--output_dir", str(tmp_path / "samples")], ["push", str(folder), "me/x"]):
        assert main(command) == 2
        line = one_error_line(capsys)
        assert "model_index.json" in line and re.search(message, line), line
    assert (folder / "model_index.json").read_bytes() == content and not (tmp_path / "samples").exists()


def test_a_decompression_bomb_is_named_or_skipped_when_decoded_in_memory(tmp_path):
    root = image_folder(tmp_path / "images")
    write_bomb_png(root / "bomb.png")
    source = data.load_image_source(None, train_data_dir=str(root))
    with pytest.raises(DataError, match=r"cannot read .*bomb.png: .*decompression bomb.*--skip_bad_images"):
        data.decode_dataset(source, resolution=8, channels=3)
    decoded = data.decode_dataset(source, resolution=8, channels=3, skip_bad_images=True)
    assert decoded.skipped == 1 and decoded.images.shape == (3, 3, 8, 8)


def test_an_image_past_the_pixel_limit_only_warned_about_is_bad_too(tmp_path, monkeypatch):
    root = image_folder(tmp_path / "images")
    Image.new("RGB", (10, 10)).save(root / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 80)  # 100 pixels: past the limit, not past twice it (a warning)
    source = data.load_image_source(None, train_data_dir=str(root))
    with pytest.raises(DataError, match=r"cannot read .*large.png"):
        data.decode_dataset(source, resolution=8, channels=3)
    assert data.decode_dataset(source, resolution=8, channels=3, skip_bad_images=True).skipped == 1


def test_a_decompression_bomb_is_named_or_skipped_by_streaming_workers(tmp_path, caplog):
    root = image_folder(tmp_path / "images")
    write_bomb_png(root / "bomb.png")
    source = data.load_image_source(None, train_data_dir=str(root))
    plan = data.EpochIndexPlan(4, 4, seed=0)
    strict = data.StreamingBatches(source, plan, 8, 3, False, num_classes=0, num_workers=1)
    with pytest.raises(DataError) as raised:
        list(strict.epoch(0))
    message = str(raised.value)
    assert message.startswith("cannot read ") and "bomb.png" in message and "\n" not in message
    lenient = data.StreamingBatches(source, plan, 8, 3, False, num_classes=0, num_workers=1, skip_bad_images=True)
    ((images, labels),) = list(lenient.epoch(0))
    assert images.shape == (4, 3, 8, 8) and labels is None
    assert [r.getMessage() for r in caplog.records if "bomb.png" in r.getMessage()][0].startswith("skipped")


@pytest.mark.parametrize("link", ["samples/x.png", "README.md", "samples"])
def test_push_refuses_a_symbolic_link_it_would_upload(tmp_path, capsys, link):
    folder = saved_folder(tmp_path)
    secret = tmp_path / "home" / "token"
    secret.parent.mkdir()
    secret.write_text("hf_secret")
    (folder / link).parent.mkdir(exist_ok=True)
    (folder / link).symlink_to(secret.parent if link == "samples" else secret)
    with pytest.raises(UserInputError, match=f"{re.escape(str(folder / link))} is a symbolic link"):
        publishable_files(folder)
    assert main(["push", str(folder), "someone/leak"]) == 2
    assert f"{folder / link} is a symbolic link" in one_error_line(capsys)
    assert secret.read_text() == "hf_secret" and (folder / link).is_symlink()


def test_push_refuses_a_model_card_that_is_not_utf8(tmp_path, capsys):
    folder = saved_folder(tmp_path)
    (folder / "README.md").write_bytes(b"---\nlicense: mit\n---\n\xff\xfe")
    assert main(["push", str(folder), "someone/card"]) == 2
    assert "README.md is not UTF-8 text" in one_error_line(capsys)


def test_links_where_push_never_looks_do_not_block_it(tmp_path):
    folder = saved_folder(tmp_path)
    (folder / "checkpoint-3").mkdir()
    (folder / "checkpoint-3" / "model.safetensors").symlink_to(folder / "unet" / "diffusion_pytorch_model.safetensors")
    (folder / "latest").symlink_to(folder / "checkpoint-3")
    assert "unet/diffusion_pytorch_model.safetensors" in publishable_files(folder)


@pytest.mark.parametrize(
    "entry",
    [b"", b"not safetensors", "truncated", {"mu": torch.zeros(3)}, {"mu": torch.zeros(3), "sigma": torch.zeros(2, 2)}],
    ids=["empty", "garbage", "truncated", "no-sigma", "mismatched"],
)
def test_a_corrupt_evaluation_cache_entry_is_computed_again_and_replaced(tmp_path, monkeypatch, caplog, entry):
    monkeypatch.setenv("DDPM_ZOO_CACHE", str(tmp_path / "cache"))
    arrays, _ = load_mnist_5k_arrays()
    reference = Reference("a", "test", "a", torch.from_numpy(arrays[:32]).unsqueeze(1), key="first-32-digits")
    expected = reference_digit_statistics(reference)
    (path,) = (tmp_path / "cache").glob("digit-features-*.safetensors")
    if isinstance(entry, dict):
        save_file(entry, str(path))
    else:
        path.write_bytes(path.read_bytes()[:-9] if entry == "truncated" else entry)
    torch.testing.assert_close(reference_digit_statistics(reference), expected)
    assert any("recomputing the corrupt cache entry" in record.getMessage() for record in caplog.records)
    torch.testing.assert_close((load_file(path)["mu"], load_file(path)["sigma"]), expected)  # replaced on disk


def test_evaluate_refuses_more_samples_than_it_can_hold_before_any_work(tmp_path, capsys):
    from ddpm_zoo.evaluation import evaluate_pipeline
    from ddpm_zoo.evaluation.protocol import MAX_SAMPLES

    pipeline = ClassConditionalDDPMPipeline(tiny_unet(num_class_embeds=11), DDPMScheduler(), class_names="a,b,c")
    folder = save_pipeline_folder(pipeline, tmp_path / "model")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    argv = ["evaluate", str(folder), "--num_samples", str(10**12), "--model_kind", "digits", "--no_extra_metrics"]
    assert main([*argv, "--device", "cpu"]) == 2
    assert f"--num_samples must be at most {MAX_SAMPLES:,}" in one_error_line(capsys)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before
    with pytest.raises(UserInputError, match=f"num_samples must be at most {MAX_SAMPLES:,}, got 1,000,000,000,000"):
        evaluate_pipeline(pipeline, num_samples=10**12, digits=True, extra=False, progress=False)


@pytest.mark.slow
def test_the_hub_tests_pass_when_the_caller_has_offline_mode_exported(tmp_path):
    tests = Path(__file__).parent
    selected = [
        f"{tests / 'test_hub.py'}::test_push_to_a_new_branch_leaves_main_alone",
        f"{tests / 'test_hub.py'}::test_push_without_a_token_is_one_line_with_a_hint",
    ]
    env = {**os.environ, **dict.fromkeys(OFFLINE_VARIABLES, "1"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "t")]
    result = subprocess.run(
        [*command, *selected], env=env, cwd=tests.parent, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-3000:]


@pytest.mark.parametrize("value", ["0", "1.5", "nan", "-inf"])
def test_an_ema_max_decay_outside_0_to_1_is_one_error_line(tmp_path, capsys, value):
    assert main(["train", f"--ema_max_decay={value}", "--output_dir", str(tmp_path / "out")]) == 2
    assert one_error_line(capsys) == f"error: --ema_max_decay must be in (0, 1], got {float(value)}"
    assert not (tmp_path / "out").exists()
    assert main(["train", "--ema_max_decay", "1", "--print_config", "--output_dir", str(tmp_path / "out")]) == 0


TOKEN = "hf_" + "Secret" * 6


def token_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: --hub_token")]


@pytest.mark.parametrize("tracker", ["wandb", "comet_ml", "clearml", "all"])
def test_a_token_option_with_a_tracker_that_records_the_command_line_is_refused(tmp_path, capsys, tracker):
    argv = ["train", "--hub_token", TOKEN, "--report_to", tracker, "--output_dir", str(tmp_path / "out")]
    assert main(argv) == 2
    stderr = capsys.readouterr().err
    assert TOKEN not in stderr
    warning, error = stderr.strip().splitlines()
    assert token_warnings(stderr) == [warning] and "prefer HF_TOKEN or `hf auth login`" in warning
    assert error == (
        f"error: --hub_token cannot go with --logger {tracker}, which records the command line and so the token; "
        "drop --hub_token and set HF_TOKEN or run `hf auth login`"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_under_accelerate_launch_only_the_launcher_repeats_a_token_option(tmp_path):
    """A failing script makes `accelerate launch` print its command line, token included: ddpm-zoo warns
    about that once and prints the token in none of its own lines."""
    argv = ["--train_data_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out"), "--logger", "none"]
    result = launch("train_unconditional.py", [*argv, "--hub_token", TOKEN])
    assert result.returncode != 0
    assert len(token_warnings(result.stderr)) == 1  # the launcher repeats it after "RuntimeError: "
    errors = {line for line in result.stderr.splitlines() if line.startswith("error:")}  # and the error line
    assert errors == {f"error: --train_data_dir {tmp_path / 'nowhere'} does not exist"}
    launcher = "returned non-zero exit status"  # accelerate's CalledProcessError, with the command line
    assert [line for line in result.stderr.splitlines() if TOKEN in line and launcher not in line] == []

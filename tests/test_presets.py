"""Presets build the networks they promise, and command-line options override preset defaults."""

import json

import pytest
import torch
from diffusers import UNet2DModel
from diffusers.models.attention_processor import Attention

from ddpm_zoo.commands.train import parse_config
from ddpm_zoo.config import COMPILE_MIN_STEPS, load_unet_config
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.presets import PRESETS, get_preset
from ddpm_zoo.training import compiles_by_default, cpp_compiler


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cifar10_ddpm_is_the_paper_network():
    preset = get_preset("cifar10-ddpm")
    model = UNet2DModel(**preset.unet)
    assert parameter_count(model) == 35_746_307
    attention = [module for module in model.modules() if isinstance(module, Attention)]
    assert len(attention) == 6 and all(module.heads == 1 for module in attention)  # 2 down, 1 mid, 3 up
    assert model.config.dropout == 0.1
    assert preset.training["learning_rate"] == 2e-4
    assert preset.training["lr_warmup_steps"] == 5000
    assert preset.training["train_batch_size"] == 128
    assert preset.training["ema_max_decay"] == 0.9999
    assert preset.training["random_flip"] is True


@pytest.mark.parametrize("name, channels", [("mnist-tiny", 1), ("colored-mnist", 3)])
def test_digit_presets_are_small_three_level_unets(name, channels):
    preset = get_preset(name)
    model = UNet2DModel(**preset.unet)
    assert 1_000_000 <= parameter_count(model) <= 2_000_000
    assert model.config.in_channels == channels
    assert model.config.sample_size == 28
    assert [t.startswith("Attn") for t in model.config.down_block_types] == [False, False, True]


def test_every_preset_names_a_card_template_and_dataset():
    for preset in PRESETS.values():
        assert preset.card_template.endswith(".md")
        assert preset.dataset.license


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(UserInputError, match="unknown preset 'mnist-huge'; choose one of: mnist-tiny"):
        get_preset("mnist-huge")


def test_command_line_overrides_preset_defaults():
    config = parse_config(["--preset", "cifar10-ddpm", "--learning_rate", "3e-4"])
    assert config.learning_rate == 3e-4
    assert config.train_batch_size == 128
    assert config.dataset_name == "uoft-cs/cifar10"
    assert config.output_dir == "ddpm-cifar10-ddpm-output"


def test_push_to_hub_defaults_the_repo_to_the_output_folder_name():
    """As diffusers' example: --push_to_hub without --hub_model_id pushes to the output folder's name."""
    config = parse_config(["--push_to_hub", "--output_dir", "runs/my-digits"])
    assert config.hub_model_id == "my-digits"
    assert parse_config(["--output_dir", "runs/x"]).hub_model_id is None


def test_conditional_script_defaults_to_colored_mnist():
    config = parse_config([], conditional=True)
    assert config.preset == "colored-mnist"
    assert config.colorize is True
    assert config.conditional is True
    assert config.label_column_names == ("label", "color")  # digit and color, each with its own null value
    assert config.cond_drop_prob == 0.15


def test_boolean_options_can_be_switched_off():
    assert parse_config(["--preset", "cifar10-ddpm", "--no-random_flip"]).random_flip is False


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--train_batch_size", "0"], "--train_batch_size must be at least 1"),
        (["--learning_rate", "-1"], "--learning_rate must be a finite positive number"),
        (["--learning_rate", "inf"], "--learning_rate must be a finite positive number"),
        (["--lr_scheduler", "polynomial", "--learning_rate", "1e-8"], "polynomial decays to 1e-07: --learning_rate"),
        (["--adam_beta1", "1.5"], "--adam_beta1 must be in \\[0, 1\\), got 1.5"),
        (["--adam_epsilon", "-1"], "--adam_epsilon must be >= 0"),
        (["--resolution", "-8"], "--resolution must be at least 1, got -8"),
        (["--resolution", "0"], "--resolution must be at least 1, got 0"),
        (["--num_sample_images", "0"], "--num_sample_images must be at least 1"),
        (["--ddpm_num_inference_steps", "60", "--ddpm_num_steps", "50"], "--ddpm_num_inference_steps 60 is more than"),
        (["--seed", "-1"], "--seed must be between 0 and 4294967295"),
        (["--save_model_epochs", "10"], "--save_model_epochs is not supported.*use --checkpointing_steps"),
        (["--save_images_epochs", "2", "--save_images_steps", "5"], "--save_images_steps or --save_images_epochs"),
        (["--push_to_hub", "--hub_model_id", "bad//id"], "invalid repo id 'bad//id'"),
        (["--autoguidance_scale", "-1"], "--autoguidance_scale must be a finite number >= 0"),
        (["--autoguidance_scale", "nan"], "--autoguidance_scale must be a finite number >= 0"),
        (["--autoguidance_guide_fraction", "1"], "--autoguidance_guide_fraction must be between 0 and 1"),
        (["--self_guidance_clusters", "1"], "--self_guidance_clusters must be 0 \\(off\\) or at least 2, got 1"),
        (["--self_guidance_scale", "inf"], "--self_guidance_scale must be a finite number >= 0"),
        (["--autoguidance_scale", "3"], "choose one guidance: --autoguidance_scale"),
        (["--streaming"], "--self_guidance_clusters clusters the whole dataset in memory; drop --streaming"),
        (
            ["--compile", "--compile_mode", "reduce-overhead", "--gradient_accumulation_steps", "2"],
            "--compile_mode reduce-overhead replays CUDA graphs",
        ),
    ],
)
def test_bad_option_values_are_rejected(argv, message):
    with pytest.raises(UserInputError, match=message):
        parse_config(argv, conditional=False)


def test_num_epochs_replaces_the_presets_step_count():
    by_epochs = parse_config(["--num_epochs", "3"])
    assert by_epochs.num_epochs == 3 and by_epochs.max_train_steps is None
    both = parse_config(["--num_epochs", "3", "--max_train_steps", "7"])
    assert both.max_train_steps == 7
    assert parse_config([]).max_train_steps == 1300  # the preset's


def test_diffusers_example_options_are_accepted():
    """As in diffusers' train_unconditional.py: --center_crop (what ddpm-zoo always does), --eval_batch_size
    (images generated for the sample grids) and --save_images_epochs."""
    argv = ["--center_crop", "--eval_batch_size", "8", "--save_images_epochs", "2"]
    config = parse_config(argv, conditional=False)
    assert config.num_sample_images == 8 and config.save_images_epochs == 2
    assert "center_crop" not in config.public_dict()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"[1, 2]", "holds a JSON list, not an object"),
        (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "is not valid JSON"),
        (None, "cannot read .*config.json \\(Is a directory\\)"),
    ],
)
def test_unusable_model_configs_are_one_clear_error(tmp_path, content, message):
    if content is None:
        (tmp_path / "config.json").mkdir()
    else:
        (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(UserInputError, match=f"--model_config_name_or_path: .*{message}"):
        load_unet_config(str(tmp_path))


def test_compile_modes_without_cuda_graphs_accumulate_gradients():
    for mode in ("default", "max-autotune-no-cudagraphs"):
        argv = ["--compile", "--compile_mode", mode, "--gradient_accumulation_steps", "2"]
        assert parse_config(argv, conditional=False).compile_mode == mode
    argv = ["--no-compile", "--compile_mode", "reduce-overhead", "--gradient_accumulation_steps", "2"]  # unused
    assert parse_config(argv, conditional=False).compile is False
    argv = ["--compile_mode", "reduce-overhead", "--gradient_accumulation_steps", "2"]  # compiled by default
    with pytest.raises(UserInputError, match="or --no-compile"):
        parse_config(argv, conditional=False)


def test_self_guidance_defaults_apply_to_unconditional_mnist_tiny_only():
    unconditional = parse_config([], conditional=False)
    assert unconditional.self_guidance_clusters == 50 and unconditional.self_guidance_scale == 3.0
    assert unconditional.autoguidance_scale == 1.0
    conditional = parse_config(["--preset", "mnist-tiny"], conditional=True)
    assert conditional.self_guidance_clusters == 0
    cifar = parse_config(["--preset", "cifar10-ddpm"], conditional=False)
    assert cifar.self_guidance_clusters == 0 and cifar.autoguidance_scale == 1.0
    argv = ["--self_guidance_clusters", "0", "--autoguidance_scale", "3"]
    autoguided = parse_config(argv, conditional=False)
    assert autoguided.autoguidance_scale == 3.0 and autoguided.self_guidance_clusters == 0


def test_the_presets_own_network_is_recognised_for_its_card(tmp_path):
    """The preset's card describes the preset's UNet: it applies to the default network, even read back from a
    JSON file, and not to the same network at another resolution."""
    from ddpm_zoo.training import as_json, resolve_unet_config

    preset = get_preset("mnist-tiny")
    default = resolve_unet_config(parse_config([]), preset)
    assert as_json(default) == as_json(preset.unet)
    (tmp_path / "config.json").write_text(json.dumps(dict(preset.unet)))
    from_file = resolve_unet_config(parse_config(["--model_config_name_or_path", str(tmp_path)]), preset)
    assert as_json(from_file) == as_json(preset.unet)
    smaller = resolve_unet_config(parse_config(["--resolution", "16"]), preset)
    assert as_json(smaller) != as_json(preset.unet)


def test_compile_is_on_by_default_only_where_it_pays():
    cpu = torch.device("cpu")
    assert not compiles_by_default(cpu, COMPILE_MIN_STEPS["cpu"] - 1)
    assert not compiles_by_default(torch.device("cuda"), COMPILE_MIN_STEPS["cuda"] - 1)
    assert compiles_by_default(torch.device("cuda"), COMPILE_MIN_STEPS["cuda"])
    assert not compiles_by_default(torch.device("mps"), 10**6)
    assert compiles_by_default(cpu, COMPILE_MIN_STEPS["cpu"]) == (cpp_compiler() is not None)
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-c++-compiler",)}):
        assert cpp_compiler() is None
        assert not compiles_by_default(cpu, 10**6)  # no C++ compiler: eager, the fallback
    assert parse_config([], conditional=False).compile is None  # decided by the trainer, which knows the device
    assert parse_config(["--no-compile"], conditional=False).compile is False

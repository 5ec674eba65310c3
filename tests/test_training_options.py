"""Training options come from one declaration per option: ranges, --help with the preset's defaults,
--print_config, and `ddpm-zoo train` beside the two scripts."""

import json

import pytest

from ddpm_zoo.commands.main import main as ddpm_zoo_main
from ddpm_zoo.commands.train import main as train_main
from ddpm_zoo.config import options


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--snr_gamma", "0"], "--snr_gamma must be a finite positive number, got 0.0"),
        (["--snr_gamma", "inf"], "--snr_gamma must be a finite positive number, got inf"),
        (["--ema_power", "0"], "--ema_power must be a finite positive number, got 0.0"),
        (["--ema_power", "nan"], "--ema_power must be a finite positive number, got nan"),
        (["--ema_inv_gamma", "-1"], "--ema_inv_gamma must be a finite positive number, got -1.0"),
        (["--num_cpu_threads", "0"], "--num_cpu_threads must be at least 1, got 0"),
        (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be >= 0, got -1"),
        (["--max_grad_norm", "0"], "--max_grad_norm must be a finite positive number, got 0.0"),
        (["--max_grad_norm", "inf"], "--max_grad_norm must be a finite positive number, got inf"),
    ],
)
def test_out_of_range_values_are_one_error_line_and_exit_2(argv, expected, capsys, tmp_path):
    output = tmp_path / "out"
    assert train_main([*argv, "--output_dir", str(output)], conditional=False) == 2
    assert error_lines(capsys) == [f"error: {expected}"]
    assert not output.exists()


def test_print_config_prints_the_resolved_options_without_the_token_and_trains_nothing(capsys, tmp_path):
    output = tmp_path / "out"
    argv = ["--preset", "cifar10-ddpm", "--learning_rate", "3e-4", "--output_dir", str(output)]
    assert train_main([*argv, "--hub_token", "hf_secret", "--print_config"], conditional=False) == 0
    out = capsys.readouterr().out
    config = json.loads(out)
    assert config["learning_rate"] == 3e-4 and config["max_train_steps"] == 800_000  # given, then the preset's
    assert config["lr_scheduler"] == "constant" and config["random_flip"] is True and config["conditional"] is False
    assert "hub_token" not in config and "hf_secret" not in out
    assert not output.exists()


def help_text(argv: list[str], conditional: bool, capsys) -> str:
    assert train_main([*argv, "--help"], conditional=conditional) == 0
    return " ".join(capsys.readouterr().out.split())


def test_help_shows_the_chosen_presets_defaults(capsys):
    digits = help_text([], False, capsys)
    assert "AdamW learning rate (default: 0.002)" in digits
    assert "(default: 50)" in digits and "Defaults shown are those of --preset mnist-tiny" in digits
    cifar = help_text(["--preset", "cifar10-ddpm"], False, capsys)
    assert "AdamW learning rate (default: 0.0002)" in cifar and "(default: ddpm-cifar10-ddpm-output)" in cifar
    assert "learning-rate schedule (default: constant)" in cifar
    conditional = help_text([], True, capsys)
    assert "(default: colored-mnist)" in conditional and "--autoguidance_scale" not in conditional


def test_every_option_has_help():
    assert [spec.name for spec in options() if not spec.metadata["help"]] == []


def test_ddpm_zoo_train_takes_the_conditional_switch(capsys):
    assert ddpm_zoo_main(["train", "--conditional", "--print_config"]) == 0
    config = json.loads(capsys.readouterr().out)
    assert config["conditional"] is True and config["preset"] == "colored-mnist" and config["colorize"] is True
    assert ddpm_zoo_main(["train", "--print_config"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "mnist-tiny"
    assert ddpm_zoo_main(["train", "--conditional", "--autoguidance_scale", "2"]) == 2
    assert error_lines(capsys) == [
        "error: --autoguidance_scale is for unconditional models; class-conditional ones use classifier-free guidance"
    ]
    assert ddpm_zoo_main(["train", "--conditional", "--preset", "cifar10-ddpm", "--help"]) == 0
    assert "Defaults shown are those of --preset cifar10-ddpm for a class-conditional model" in " ".join(
        capsys.readouterr().out.split()
    )


def print_config(argv: list[str], capsys) -> tuple[dict, str]:
    assert train_main([*argv, "--print_config"], conditional=False) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


@pytest.mark.parametrize("name", ["all", "comet_ml", "mlflow", "aim", "clearml", "dvclive", "swanlab", "trackio"])
def test_report_to_names_any_of_accelerates_trackers_as_logger_does(name, capsys):
    assert print_config(["--report_to", name], capsys)[0]["logger"] == name
    assert print_config(["--logger", name], capsys)[0]["logger"] == name


def test_report_to_refuses_an_unknown_tracker(capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_main(["--report_to", "tensorbord"], conditional=False)
    assert exit_info.value.code == 2
    assert "argument --logger/--report_to: invalid choice: 'tensorbord'" in capsys.readouterr().err


def test_tracker_project_name_defaults_to_the_output_folders_name(capsys, tmp_path):
    assert print_config([], capsys)[0]["tracker_project_name"] == "ddpm-mnist-tiny-output"
    given = ["--output_dir", str(tmp_path / "runs" / "digits-a")]
    assert print_config(given, capsys)[0]["tracker_project_name"] == "digits-a"
    assert print_config([*given, "--tracker_project_name", "digits"], capsys)[0]["tracker_project_name"] == "digits"
    assert "--output_dir's folder name" in help_text([], False, capsys)


def test_options_of_diffusers_example_that_mean_nothing_here_are_accepted_with_a_note(capsys):
    plain, _ = print_config([], capsys)
    official = ["--enable_xformers_memory_efficient_attention", "--local_rank", "0", "--preserve_input_precision"]
    config, err = print_config([*official, "--center_crop"], capsys)
    assert config == plain  # nothing about the run changes
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert [note.split(" is ignored: ")[0] for note in notes] == [
        "note: --center_crop",
        "note: --enable_xformers_memory_efficient_attention",
        "note: --local_rank",
        "note: --preserve_input_precision",
    ]
    assert print_config([], capsys)[1] == ""  # no note without them

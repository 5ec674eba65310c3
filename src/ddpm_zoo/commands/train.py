"""`ddpm-zoo train [--conditional]` and the two training scripts: options from `TrainingConfig`'s fields.

The parser, its help and its checks come from the fields of `ddpm_zoo.config.TrainingConfig`; `--help`
shows the defaults of the chosen `--preset`, and `--print_config` prints the resolved options as JSON
and exits without training (as EDM's `--dry-run`).
"""

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ddpm_zoo.checkpoints import complete_checkpoints
from ddpm_zoo.commands import run_command
from ddpm_zoo.config import TrainingConfig, option_type, options, resolve_config
from ddpm_zoo.errors import TrainingStopped, UserInputError
from ddpm_zoo.presets import CONDITIONAL_PRESET, UNCONDITIONAL_PRESET
from ddpm_zoo.stopping import Interrupted
from ddpm_zoo.training import run_training

USAGE = "%(prog)s [--preset PRESET] [options]"

# Options of diffusers' train_unconditional.py that mean nothing here: the value they take (None: a switch)
# and why, printed as a note when given.
IGNORED_OPTIONS: dict[str, tuple[type | None, str]] = {
    "--center_crop": (None, "images are always resized (shorter side) and centre-cropped"),
    "--enable_xformers_memory_efficient_attention": (
        None,
        "attention runs on PyTorch's fused scaled_dot_product_attention (memory-efficient kernels included); "
        "--attention chooses the kernel",
    ),
    "--local_rank": (int, "accelerate launch gives each process its rank"),
    "--preserve_input_precision": (None, "16-bit and float images are scaled into range, then trained as 8-bit"),
}


def shown(value: Any) -> str:
    """An option's default as `--help` shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def add_options(parser: argparse.ArgumentParser, conditional: bool, preset: str | None, subcommand: bool) -> None:
    """Every `TrainingConfig` field as `--NAME`, with the defaults that `preset` resolves to (for a conditional
    model or not) in its help. The `ddpm-zoo train` subcommand has `--conditional` and all options; a training
    script is one kind, and the conditional one lacks the unconditional-only options."""
    defaults = resolve_config({"preset": preset}, conditional)
    groups: dict[str | None, Any] = {None: parser}
    for spec in options():
        if spec.name == "conditional" or (conditional and not subcommand and spec.metadata["unconditional_only"]):
            continue
        meta = spec.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        default = getattr(defaults, spec.name)
        text = " ".join(part for part in (meta["help"], default is not None and f"(default: {shown(default)})") if part)
        names, text = (f"--{spec.name}", *meta["aliases"]), text.replace("%", "%%")
        if option_type(spec) is bool:
            groups[meta["group"]].add_argument(*names, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            groups[meta["group"]].add_argument(*names, type=option_type(spec), choices=meta["choices"], help=text)
    if subcommand:
        [kind] = [spec for spec in options() if spec.name == "conditional"]
        parser.add_argument(
            "--conditional",
            action="store_true",
            help=f"{kind.metadata['help']} (default preset {CONDITIONAL_PRESET}; without it {UNCONDITIONAL_PRESET})",
        )
    ignored = parser.add_argument_group("accepted from diffusers' train_unconditional.py and ignored")
    for name, (kind, why) in IGNORED_OPTIONS.items():
        dest = f"ignored_{name[2:]}"
        if kind is None:
            ignored.add_argument(name, dest=dest, action="store_true", default=None, help=why)
        else:
            ignored.add_argument(name, dest=dest, type=kind, metavar=name[2:].upper(), help=why)
    parser.add_argument("--save_model_epochs", type=int, help=argparse.SUPPRESS)  # refused with a hint
    parser.add_argument("--print_config", action="store_true", help="print the resolved options as JSON and exit")
    parser.add_argument("-h", "--help", action="store_true", help="show this help (for the chosen --preset) and exit")
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    parser.set_defaults(func=train_command, prog=parser.prog, subcommand=subcommand)
    if not subcommand:
        parser.set_defaults(conditional=conditional)
    parser.epilog = (
        f"Defaults shown are those of --preset {defaults.preset}"
        f"{' for a class-conditional model' if conditional else ''}; `--preset NAME --help` shows another preset's."
    )


def description(conditional: bool, subcommand: bool) -> str:
    if subcommand:
        return "Train a DDPM with Accelerate: unconditional, or class-conditional with --conditional."
    return f"Train an {'class-conditional' if conditional else 'unconditional'} DDPM with Accelerate."


def build_parser(
    conditional: bool, preset: str | None = None, prog: str | None = None, subcommand: bool = False
) -> argparse.ArgumentParser:
    """The options of diffusers' `train_unconditional.py`, plus `--preset` and ddpm-zoo's own."""
    parser = argparse.ArgumentParser(
        prog=prog, usage=USAGE, description=description(conditional, subcommand), add_help=False
    )
    add_options(parser, conditional, preset, subcommand)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `train` on the `ddpm-zoo` command line."""
    parser = subparsers.add_parser(
        "train",
        usage=USAGE,
        help="train a DDPM (as the training scripts)",
        description=description(False, True),
        add_help=False,
    )
    add_options(parser, False, None, subcommand=True)


def first_process() -> bool:
    """True in the first process of `accelerate launch` (and in a plain run), which alone prints notes."""
    return int(os.environ.get("RANK", "0")) == 0


def note_ignored_options(args: argparse.Namespace) -> None:
    """One note line for each ignored option given, from the first process only."""
    if not first_process():
        return
    for name, (_, why) in IGNORED_OPTIONS.items():
        if getattr(args, f"ignored_{name[2:]}") is not None:
            print(f"note: {name} is ignored: {why}", file=sys.stderr)


def warn_about_token(args: argparse.Namespace) -> None:
    """One warning line when the token is an option: ddpm-zoo never writes it out, but a command line is
    not private."""
    if getattr(args, "hub_token", None) is not None and first_process():
        print(
            "warning: --hub_token sits on the command line, which `accelerate launch` prints when the script "
            "fails, `ps` shows and trackers such as wandb record; prefer HF_TOKEN or `hf auth login`",
            file=sys.stderr,
        )


def where_checkpoints_are(output_dir: str) -> str:
    """Where a stopped run can continue from, for its last line."""
    kept = complete_checkpoints(Path(output_dir))
    return f"the last complete checkpoint is {kept[-1]}" if kept else "no checkpoint was completed"


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    """The resolved configuration: the preset's defaults and the options given, checked."""
    if args.save_model_epochs is not None:
        raise UserInputError(
            "--save_model_epochs is not supported: ddpm-zoo publishes the pipeline once, at the end, and saves "
            "resumable checkpoints every --checkpointing_steps steps; use --checkpointing_steps"
        )
    given = {spec.name: getattr(args, spec.name, None) for spec in options() if spec.name != "conditional"}
    return resolve_config(given, args.conditional)


def parse_config(argv: list[str], conditional: bool = False) -> TrainingConfig:
    """The configuration a training script resolves for `argv` (for tests and benchmarks)."""
    return config_from_args(build_parser(conditional).parse_args(argv))


def train_command(args: argparse.Namespace) -> int:
    """Print the help or the configuration, or train; a failed write stops the run with status 1."""
    if args.help:
        build_parser(args.conditional, args.preset, args.prog, args.subcommand).print_help()
        return 0
    note_ignored_options(args)
    warn_about_token(args)
    config = config_from_args(args)
    if args.print_config:
        print(json.dumps(config.public_dict(), indent=2))
        return 0
    try:
        summary = run_training(config)
    except OSError as error:
        if getattr(args, "debug", False):
            raise
        where = where_checkpoints_are(config.output_dir)
        raise TrainingStopped(f"cannot write to {config.output_dir}: {error.strerror or error}; {where}", 1) from None
    except Interrupted as interrupted:
        where = where_checkpoints_are(config.output_dir)
        raise Interrupted(interrupted.number, f"{interrupted}; nothing half-written was left; {where}") from None
    steps, seconds = summary["global_step"], summary["wall_time_s"]
    print(f"done: {steps} steps in {seconds:.0f} s; pipeline in {config.output_dir}")
    return 0


def main(argv: list[str] | None = None, conditional: bool = False) -> int:
    """Entry point of both training scripts: one line and exit 2 for bad input."""
    args = build_parser(conditional).parse_args(argv)
    return run_command(train_command, args)


if __name__ == "__main__":
    sys.exit(main())

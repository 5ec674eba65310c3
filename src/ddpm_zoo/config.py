"""Training options: one dataclass, the argparse front end both training scripts share, and the rule
that a preset supplies defaults which any option given on the command line overrides."""

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ddpm_zoo.errors import UserInputError
from ddpm_zoo.presets import CONDITIONAL_PRESET, PRESETS, UNCONDITIONAL_PRESET, get_preset
from ddpm_zoo.publish import check_push_target

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
MIXED_PRECISION = ("no", "fp16", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
ATTENTION_KERNELS = ("auto", "sdpa", "classic")
LOGGERS = ("tensorboard", "wandb", "none")
SAMPLE_SCHEDULERS = ("ddpm", "ddim", "dpmsolver", "euler", "unipc")
POLYNOMIAL_LR_END = 1e-7  # diffusers' get_scheduler("polynomial") decays to this and needs a larger learning rate
MAX_SEED = 2**32 - 1  # Accelerate's set_seed seeds NumPy, which takes 0..2**32 - 1


@dataclass
class TrainingConfig:
    """Everything a training run needs; field names are the command-line option names."""

    preset: str = UNCONDITIONAL_PRESET
    conditional: bool = False
    # data
    dataset_name: str | None = None
    dataset_config_name: str | None = None
    train_data_dir: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    cache_dir: str | None = None
    resolution: int | None = None
    random_flip: bool = False
    colorize: bool = False
    convert_channels: bool = False
    skip_bad_images: bool = False
    streaming: bool = False
    dataloader_num_workers: int = 2
    # model and noise schedule
    model_config_name_or_path: str | None = None
    ddpm_num_steps: int = 1000
    ddpm_beta_schedule: str = "linear"
    prediction_type: str = "epsilon"
    snr_gamma: float | None = None
    cond_drop_prob: float = 0.1
    autoguidance_scale: float = 1.0
    autoguidance_guide_fraction: float = 0.25
    self_guidance_clusters: int = 0
    self_guidance_scale: float = 3.0
    # optimisation
    train_batch_size: int = 64
    num_epochs: int | None = None
    max_train_steps: int | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 500
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-6
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_inv_gamma: float = 1.0
    ema_power: float = 3 / 4
    ema_max_decay: float = 0.9999
    mixed_precision: str = "no"
    compile: bool = False
    compile_mode: str = "default"
    channels_last: bool = False
    cudnn_benchmark: bool = True
    attention: str = "auto"
    num_cpu_threads: int | None = None
    seed: int = 0
    # outputs, checkpoints, logging
    output_dir: str | None = None
    overwrite_output_dir: bool = False
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    save_images_steps: int = 500
    save_images_epochs: int | None = None
    num_sample_images: int = 20
    sample_scheduler: str = "dpmsolver"
    ddpm_num_inference_steps: int = 50
    logging_steps: int = 10
    logger: str = "tensorboard"
    logging_dir: str = "logs"
    # hub
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = False
    hub_token: str | None = field(default=None, repr=False)
    debug: bool = False

    def public_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict without secrets (for run records and logs)."""
        values = dataclasses.asdict(self)
        values.pop("hub_token")
        return values


def _bool_flag(parser: argparse.ArgumentParser, name: str, help: str) -> None:
    parser.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=None, help=help)


def build_parser(conditional: bool) -> argparse.ArgumentParser:
    """The options of diffusers' `train_unconditional.py`, plus `--preset` and ddpm-zoo's own."""
    kind = "class-conditional" if conditional else "unconditional"
    parser = argparse.ArgumentParser(
        description=f"Train an {kind} DDPM with Accelerate.",
        epilog="Options left out take the --preset's defaults (its network, schedule, data, precision, loss and "
        "guidance); a default in parentheses above applies where the preset sets none.",
        argument_default=None,
    )
    add = parser.add_argument
    default_preset = CONDITIONAL_PRESET if conditional else UNCONDITIONAL_PRESET
    add("--preset", default=default_preset, help=f"recipe: {', '.join(PRESETS)} (default {default_preset})")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_name", help="Hub dataset id, or mnist-5k for the embedded digits")
    data.add_argument("--dataset_config_name")
    data.add_argument("--train_data_dir", help="local image folder, or parquet/arrow files")
    data.add_argument("--image_column")
    data.add_argument("--label_column")
    data.add_argument("--cache_dir")
    data.add_argument("--resolution", type=int)
    data.add_argument(
        "--center_crop",
        action="store_true",
        default=None,
        help="accepted as in diffusers' example; images are always resized (shorter side) and centre-cropped",
    )
    for name, text in (
        ("random_flip", "randomly flip images horizontally"),
        ("colorize", "tint grayscale digits with seeded palette colors"),
        ("convert_channels", "convert images to the model's channel count instead of failing"),
        ("skip_bad_images", "skip unreadable images (counted) instead of failing"),
        ("streaming", "decode per batch in DataLoader workers instead of holding the data in memory"),
    ):
        _bool_flag(data, name, text)
    data.add_argument("--dataloader_num_workers", type=int)
    model = parser.add_argument_group("model and noise schedule")
    model.add_argument("--model_config_name_or_path", help="a UNet2DModel config.json (file or folder)")
    model.add_argument("--ddpm_num_steps", type=int)
    model.add_argument("--ddpm_beta_schedule", choices=BETA_SCHEDULES)
    model.add_argument("--prediction_type", choices=PREDICTION_TYPES)
    model.add_argument(
        "--snr_gamma",
        type=float,
        help="Min-SNR-gamma loss weighting (Hang et al., 2023; 5.0 is their choice, and the digit presets'); "
        "otherwise plain MSE",
    )
    model.add_argument(
        "--cond_drop_prob", type=float, help="probability of the null class (or null cluster) (default 0.1)"
    )
    if not conditional:
        model.add_argument(
            "--autoguidance_scale",
            type=float,
            help="autoguidance weight (Karras et al., 2024) saved as the pipeline's default; a value other than "
            "1 keeps the EMA weights from early in training as the guide model (default 1: no guide)",
        )
        model.add_argument(
            "--autoguidance_guide_fraction",
            type=float,
            help="the guide is the EMA weights after this fraction of the optimizer steps (default 0.25)",
        )
        model.add_argument(
            "--self_guidance_clusters",
            type=int,
            help="self-guidance (Hu et al., 2023): condition on K k-means clusters of the training images, no "
            "labels needed, and sample with classifier-free guidance over them (mnist-tiny: 50; else 0: off; "
            "it needs the in-memory data path, so pass 0 with --streaming)",
        )
        model.add_argument(
            "--self_guidance_scale", type=float, help="self-guidance weight saved as the pipeline's default (3.0)"
        )
    optim = parser.add_argument_group("optimisation")
    for name, kind_ in (
        ("train_batch_size", int),
        ("num_epochs", int),
        ("max_train_steps", int),
        ("gradient_accumulation_steps", int),
        ("learning_rate", float),
        ("lr_warmup_steps", int),
        ("adam_beta1", float),
        ("adam_beta2", float),
        ("adam_weight_decay", float),
        ("adam_epsilon", float),
        ("max_grad_norm", float),
        ("ema_inv_gamma", float),
        ("ema_power", float),
        ("ema_max_decay", float),
        ("seed", int),
    ):
        optim.add_argument(f"--{name}", type=kind_)
    optim.add_argument("--lr_scheduler", choices=LR_SCHEDULERS)
    optim.add_argument("--mixed_precision", choices=MIXED_PRECISION)
    _bool_flag(optim, "use_ema", "keep an EMA of the weights; the EMA is what gets published")
    _bool_flag(optim, "compile", "torch.compile the UNet")
    optim.add_argument(
        "--compile_mode",
        choices=COMPILE_MODES,
        help="torch.compile mode with --compile (default 'default'); 'reduce-overhead' replays CUDA graphs, "
        "which removes the kernel-launch cost that bounds small batches on a GPU",
    )
    _bool_flag(optim, "channels_last", "channels_last memory format")
    _bool_flag(
        optim,
        "cudnn_benchmark",
        "on a GPU, let cuDNN time its convolution algorithms for the step's fixed shapes on first use and keep "
        "the fastest (default on, as EDM's --bench; --no-cudnn_benchmark uses cuDNN's heuristic choice)",
    )
    optim.add_argument(
        "--attention",
        choices=ATTENTION_KERNELS,
        help="attention kernel: PyTorch's fused scaled_dot_product_attention ('sdpa'), diffusers' classic "
        "baddbmm + softmax + bmm processor ('classic'), or 'auto' (default): per layer, classic on CPU where "
        "heads x tokens^2 <= 131072 (the fused kernel's backward is slow there), sdpa everywhere else",
    )
    optim.add_argument(
        "--num_cpu_threads",
        type=int,
        help="torch threads per process on CPU (default: the cores divided among the processes; a plain "
        "`accelerate launch` on a machine without GPUs would otherwise leave one thread)",
    )
    out = parser.add_argument_group("outputs, checkpoints and logging")
    out.add_argument("--output_dir")
    _bool_flag(out, "overwrite_output_dir", "train into an --output_dir that already holds a run or other files")
    for name in ("checkpointing_steps", "checkpoints_total_limit", "save_images_steps"):
        out.add_argument(f"--{name}", type=int)
    out.add_argument(
        "--save_images_epochs", type=int, help="save a sample grid every N epochs instead of every --save_images_steps"
    )
    out.add_argument("--save_model_epochs", type=int, help=argparse.SUPPRESS)  # refused with a hint
    out.add_argument("--num_sample_images", "--eval_batch_size", type=int, help="images in each sample grid")
    out.add_argument("--resume_from_checkpoint", help="'latest' or a checkpoint folder")
    out.add_argument("--sample_scheduler", choices=SAMPLE_SCHEDULERS, help="sampler for the sample grids")
    out.add_argument("--ddpm_num_inference_steps", type=int, help="steps for the sample grids")
    out.add_argument("--logging_steps", type=int, help="read the loss (a host sync) every N steps")
    out.add_argument("--logger", choices=LOGGERS)
    out.add_argument("--logging_dir")
    hub = parser.add_argument_group("Hugging Face Hub")
    _bool_flag(hub, "push_to_hub", "push the final pipeline folder to the Hub")
    hub.add_argument("--hub_model_id", help="the Hub repo to push to (default: --output_dir's folder name)")
    _bool_flag(hub, "hub_private_repo", "create the Hub repo as private")
    hub.add_argument("--hub_token")
    _bool_flag(parser, "debug", "show full tracebacks")
    return parser


def load_unet_config(path: str) -> dict[str, Any]:
    """A UNet2DModel config from a config.json file or a folder holding one."""
    config_path = Path(path)
    if config_path.is_dir():
        config_path = config_path / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError:
        raise UserInputError(f"--model_config_name_or_path: {config_path} does not exist") from None
    except OSError as error:
        raise UserInputError(f"--model_config_name_or_path: cannot read {config_path} ({error.strerror})") from None
    except ValueError as error:  # not JSON, or not text at all
        raise UserInputError(f"--model_config_name_or_path: {config_path} is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise UserInputError(
            f"--model_config_name_or_path: {config_path} holds a JSON {type(config).__name__}, not an object"
        )
    return {key: value for key, value in config.items() if not key.startswith("_")}


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, with diffusers' example options mapped or refused with a hint."""
    given = {key: value for key, value in vars(args).items() if value is not None}
    if "save_model_epochs" in given:
        raise UserInputError(
            "--save_model_epochs is not supported: ddpm-zoo publishes the pipeline once, at the end, and saves "
            "resumable checkpoints every --checkpointing_steps steps; use --checkpointing_steps"
        )
    if "save_images_epochs" in given and "save_images_steps" in given:
        raise UserInputError("give --save_images_steps or --save_images_epochs, not both")
    given.pop("center_crop", None)  # what the data path always does
    return given


def resolve_config(args: argparse.Namespace, conditional: bool) -> TrainingConfig:
    """Preset defaults, then every option the user gave; derived values (output_dir, hub_model_id) filled in.

    `--num_epochs` without `--max_train_steps` replaces the preset's step count; with both, the steps win.
    """
    preset = get_preset(args.preset)
    given = given_options(args)
    values: dict[str, Any] = {**preset.training}
    if "num_epochs" in given and "max_train_steps" not in given:
        values.pop("max_train_steps", None)
    values.update(given)
    values["conditional"] = conditional
    if conditional:  # autoguidance and self-guidance are unconditional presets' defaults; conditional models use CFG
        values.pop("autoguidance_scale", None)
        values.pop("self_guidance_clusters", None)
    if values.get("output_dir") is None:
        suffix = "-cond" if conditional and preset.name != CONDITIONAL_PRESET else ""
        values["output_dir"] = f"ddpm-{preset.name}{suffix}-output"
    if values.get("push_to_hub") and not values.get("hub_model_id"):  # as diffusers' example: the folder's name
        values["hub_model_id"] = Path(values["output_dir"]).resolve().name
    config = TrainingConfig(**values)
    validate(config)
    return config


def validate(config: TrainingConfig) -> None:
    """Reject option values that cannot work, before any work starts."""
    validate_counts(config)
    validate_optimizer(config)
    if not (math.isfinite(config.autoguidance_scale) and config.autoguidance_scale >= 0):
        raise UserInputError(f"--autoguidance_scale must be a finite number >= 0, got {config.autoguidance_scale}")
    if not 0 < config.autoguidance_guide_fraction < 1:
        raise UserInputError(
            f"--autoguidance_guide_fraction must be between 0 and 1, got {config.autoguidance_guide_fraction}"
        )
    validate_self_guidance(config)
    if config.compile and config.compile_mode in CUDA_GRAPH_MODES and config.gradient_accumulation_steps > 1:
        raise UserInputError(
            f"--compile_mode {config.compile_mode} replays CUDA graphs, which reuse the gradient buffers of every "
            "micro-batch (PyTorch issues #96693, #169545): use --gradient_accumulation_steps 1 or --compile_mode "
            "default / max-autotune-no-cudagraphs"
        )
    if not 0 <= config.cond_drop_prob < 1:
        raise UserInputError(f"--cond_drop_prob must be in [0, 1), got {config.cond_drop_prob}")
    if config.push_to_hub:
        check_push_target(config.hub_model_id, None)
    if config.max_train_steps is None and config.num_epochs is None:
        raise UserInputError("give --max_train_steps or --num_epochs")


def validate_counts(config: TrainingConfig) -> None:
    """Counts, sizes and intervals are at least 1; the sample grids take fewer steps than the noise schedule."""
    always = ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "save_images_steps")
    for name in (*always, "logging_steps", "ddpm_num_steps", "ddpm_num_inference_steps", "num_sample_images"):
        if getattr(config, name) < 1:
            raise UserInputError(f"--{name} must be at least 1, got {getattr(config, name)}")
    for name in ("max_train_steps", "num_epochs", "checkpoints_total_limit", "resolution", "save_images_epochs"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UserInputError(f"--{name} must be at least 1, got {value}")
    if config.ddpm_num_inference_steps > config.ddpm_num_steps:
        raise UserInputError(
            f"--ddpm_num_inference_steps {config.ddpm_num_inference_steps} is more than the "
            f"--ddpm_num_steps {config.ddpm_num_steps} the model is trained for"
        )
    if not 0 <= config.seed <= MAX_SEED:
        raise UserInputError(f"--seed must be between 0 and {MAX_SEED}, got {config.seed}")


def validate_optimizer(config: TrainingConfig) -> None:
    """The ranges torch's AdamW and diffusers' learning-rate schedules accept."""
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise UserInputError(f"--learning_rate must be a finite positive number, got {config.learning_rate}")
    if config.lr_scheduler == "polynomial" and config.learning_rate <= POLYNOMIAL_LR_END:
        raise UserInputError(
            f"--lr_scheduler polynomial decays to {POLYNOMIAL_LR_END:g}: --learning_rate must be larger, "
            f"got {config.learning_rate:g}"
        )
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(config, name) < 1:
            raise UserInputError(f"--{name} must be in [0, 1), got {getattr(config, name)}")
    for name in ("adam_epsilon", "adam_weight_decay", "lr_warmup_steps"):
        if not getattr(config, name) >= 0:
            raise UserInputError(f"--{name} must be >= 0, got {getattr(config, name)}")


def validate_self_guidance(config: TrainingConfig) -> None:
    """Self-guidance needs at least 2 clusters, a finite weight, the in-memory data path, and no autoguidance."""
    if config.self_guidance_clusters == 0:
        return
    if config.self_guidance_clusters < 2:
        raise UserInputError(
            f"--self_guidance_clusters must be 0 (off) or at least 2, got {config.self_guidance_clusters}"
        )
    if not (math.isfinite(config.self_guidance_scale) and config.self_guidance_scale >= 0):
        raise UserInputError(f"--self_guidance_scale must be a finite number >= 0, got {config.self_guidance_scale}")
    if config.autoguidance_scale != 1:
        raise UserInputError(
            "choose one guidance: --autoguidance_scale (a guide network) or --self_guidance_clusters (k-means "
            "clusters); pass --self_guidance_clusters 0 or --autoguidance_scale 1"
        )
    if config.streaming:
        raise UserInputError("--self_guidance_clusters clusters the whole dataset in memory; drop --streaming")

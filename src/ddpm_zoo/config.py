"""Training options: one dataclass whose fields declare each option once (default, help, choices, range),
and the rule that a preset supplies defaults which any option given on the command line overrides.

The command layer builds its parser and help from these fields; `validate` checks each field's range and
then the rules that tie several options together.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate.utils import LoggerType

from ddpm_zoo.errors import UserInputError
from ddpm_zoo.objectives import TIMESTEP_SAMPLINGS, VARIANCE_TYPES
from ddpm_zoo.presets import CONDITIONAL_PRESET, PRESETS, UNCONDITIONAL_PRESET, get_preset
from ddpm_zoo.publish import check_push_target

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
MIXED_PRECISION = ("no", "fp16", "bf16")
# Runs shorter than this do not win back a cold compile: a GPU step gains 1.7-3x (docs/performance.md); a CPU
# step gains 0-1.5x after one to two minutes of compiling.
COMPILE_MIN_STEPS = {"cuda": 500, "cpu": 5000}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
ATTENTION_KERNELS = ("auto", "sdpa", "classic")
# Every tracker Accelerate supports, "all" (those installed) and "none".
LOGGERS = (*(kind.value for kind in LoggerType if kind is not LoggerType.ALL), "all", "none")
SAMPLE_SCHEDULERS = ("ddpm", "ddim", "dpmsolver", "euler", "unipc")
POLYNOMIAL_LR_END = 1e-7  # diffusers' get_scheduler("polynomial") decays to this and needs a larger learning rate
MAX_SEED = 2**32 - 1  # Accelerate's set_seed seeds NumPy, which takes 0..2**32 - 1
# Trackers that record the command line (wandb) or every argparse option (comet_ml, clearml), so a token given
# as an option would be stored with the run; "all" may include them.
COMMAND_LINE_TRACKERS = ("wandb", "comet_ml", "clearml", "all")


@dataclass(frozen=True)
class Range:
    """The values an option accepts: `accepts(value)`, and `phrase` for the error line
    "--NAME must be PHRASE, got VALUE"."""

    accepts: Callable[[Any], bool]
    phrase: str


AT_LEAST_1 = Range(lambda v: v >= 1, "at least 1")
NON_NEGATIVE = Range(lambda v: v >= 0, ">= 0")
FINITE_POSITIVE = Range(lambda v: math.isfinite(v) and v > 0, "a finite positive number")
FINITE_NON_NEGATIVE = Range(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
BELOW_1 = Range(lambda v: 0 <= v < 1, "in [0, 1)")

DATA = "data"
MODEL = "model and noise schedule"
OPTIMISATION = "optimisation"
OUTPUTS = "outputs, checkpoints and logging"
HUB = "Hugging Face Hub"


def option(
    default: Any,
    help: str = "",
    group: str | None = None,
    choices: tuple[str, ...] | None = None,
    valid: Range | None = None,
    aliases: tuple[str, ...] = (),
    unconditional_only: bool = False,
    secret: bool = False,
) -> Any:
    """A `TrainingConfig` field that is also a command-line option `--NAME`: its default (where the preset sets
    none), help, section of `--help`, choices, accepted range (checked unless the value is None), other spellings,
    and whether only unconditional models have it. A secret stays out of `public_dict`."""
    metadata = {
        "help": help,
        "group": group,
        "choices": choices,
        "valid": valid,
        "aliases": aliases,
        "unconditional_only": unconditional_only,
        "secret": secret,
    }
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclass
class TrainingConfig:
    """Everything a training run needs; field names are the command-line option names."""

    preset: str = option(
        UNCONDITIONAL_PRESET, f"recipe: {', '.join(PRESETS)}; its network, noise schedule, data and defaults"
    )
    conditional: bool = option(False, "train a class-conditional model with classifier-free guidance")
    # data
    dataset_name: str | None = option(None, "Hub dataset id, or mnist-5k for the embedded digits", DATA)
    dataset_config_name: str | None = option(None, "the Hub dataset's configuration", DATA)
    train_data_dir: str | None = option(None, "local image folder, or parquet/arrow files", DATA)
    image_column: str | None = option(None, "the dataset's image column (default: the first image column)", DATA)
    label_columns: str | None = option(
        None,
        "the dataset's class label column, or two comma-separated (e.g. digit,color) for a model conditioned on "
        "both; --colorize supplies a column named color (conditional training)",
        DATA,
        aliases=("--label_column",),
    )
    cache_dir: str | None = option(None, "where datasets caches downloads", DATA)
    resolution: int | None = option(None, "image size in pixels (default: the network's)", DATA, valid=AT_LEAST_1)
    random_flip: bool = option(False, "randomly flip images horizontally", DATA)
    colorize: bool = option(False, "tint grayscale digits with seeded palette colors", DATA)
    convert_channels: bool = option(False, "convert images to the model's channel count instead of failing", DATA)
    skip_bad_images: bool = option(False, "skip unreadable images (counted) instead of failing", DATA)
    streaming: bool = option(
        False, "decode per batch in DataLoader workers instead of holding the data in memory", DATA
    )
    dataloader_num_workers: int = option(2, "DataLoader workers of --streaming", DATA, valid=NON_NEGATIVE)
    # model and noise schedule
    model_config_name_or_path: str | None = option(None, "a UNet2DModel config.json (file or folder)", MODEL)
    ddpm_num_steps: int = option(1000, "steps of the noise schedule (T)", MODEL, valid=AT_LEAST_1)
    ddpm_beta_schedule: str = option("linear", "beta schedule", MODEL, choices=BETA_SCHEDULES)
    prediction_type: str = option("epsilon", "what the network predicts", MODEL, choices=PREDICTION_TYPES)
    variance_type: str = option(
        "fixed_small",
        "reverse-process variance: fixed_small (beta~_t) or fixed_large (beta_t), or learned_range, learned with "
        "Improved DDPM's hybrid loss (the UNet outputs twice the image channels)",
        MODEL,
        choices=VARIANCE_TYPES,
    )
    snr_gamma: float | None = option(
        None,
        "Min-SNR-gamma loss weighting (Hang et al., 2023; 5.0 is their choice); unset: plain MSE",
        MODEL,
        valid=FINITE_POSITIVE,
    )
    timestep_sampling: str = option(
        "uniform",
        "how training timesteps are drawn: uniform, or importance (in proportion to the Min-SNR weights, a quarter "
        "of them uniform, each loss term reweighted so that the objective is unchanged)",
        MODEL,
        choices=TIMESTEP_SAMPLINGS,
    )
    cond_drop_prob: float = option(
        0.1,
        "probability of the null class (or null cluster); with two label columns, of each one's null value, "
        "drawn independently",
        MODEL,
        valid=BELOW_1,
    )
    autoguidance_scale: float = option(
        1.0,
        "autoguidance weight (Karras et al., 2024) saved as the pipeline's default; a value other than 1 keeps "
        "the EMA weights from early in training as the guide model (1: no guide)",
        MODEL,
        valid=FINITE_NON_NEGATIVE,
        unconditional_only=True,
    )
    autoguidance_guide_fraction: float = option(
        0.25,
        "the guide is the EMA weights after this fraction of the optimizer steps",
        MODEL,
        valid=Range(lambda v: 0 < v < 1, "between 0 and 1"),
        unconditional_only=True,
    )
    self_guidance_clusters: int = option(
        0,
        "self-guidance (Hu et al., 2023): condition on K k-means clusters of the training images, no labels "
        "needed, and sample with classifier-free guidance over them (0: off; it needs the in-memory data path, "
        "so pass 0 with --streaming)",
        MODEL,
        valid=Range(lambda v: v == 0 or v >= 2, "0 (off) or at least 2"),
        unconditional_only=True,
    )
    self_guidance_scale: float = option(
        3.0,
        "self-guidance weight saved as the pipeline's default",
        MODEL,
        valid=FINITE_NON_NEGATIVE,
        unconditional_only=True,
    )
    # optimisation
    train_batch_size: int = option(64, "images per process and micro-batch", OPTIMISATION, valid=AT_LEAST_1)
    num_epochs: int | None = option(
        None, "train this many epochs (replaces the preset's step count)", OPTIMISATION, valid=AT_LEAST_1
    )
    max_train_steps: int | None = option(
        None, "optimizer steps (wins over --num_epochs)", OPTIMISATION, valid=AT_LEAST_1
    )
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", OPTIMISATION, valid=AT_LEAST_1)
    learning_rate: float = option(1e-4, "AdamW learning rate", OPTIMISATION, valid=FINITE_POSITIVE)
    lr_scheduler: str = option("cosine", "learning-rate schedule", OPTIMISATION, choices=LR_SCHEDULERS)
    lr_warmup_steps: int = option(500, "learning-rate warm-up steps", OPTIMISATION, valid=NON_NEGATIVE)
    adam_beta1: float = option(0.9, "AdamW beta1", OPTIMISATION, valid=BELOW_1)
    adam_beta2: float = option(0.999, "AdamW beta2", OPTIMISATION, valid=BELOW_1)
    adam_weight_decay: float = option(1e-6, "AdamW weight decay", OPTIMISATION, valid=NON_NEGATIVE)
    adam_epsilon: float = option(1e-8, "AdamW epsilon", OPTIMISATION, valid=NON_NEGATIVE)
    max_grad_norm: float = option(1.0, "clip the gradient norm to this", OPTIMISATION, valid=FINITE_POSITIVE)
    use_ema: bool = option(True, "keep an EMA of the weights; the EMA is what gets published", OPTIMISATION)
    ema_inv_gamma: float = option(
        1.0, "EMA warm-up: decay = 1 - (1 + step / inv_gamma)^-power", OPTIMISATION, valid=FINITE_POSITIVE
    )
    ema_power: float = option(3 / 4, "EMA warm-up power", OPTIMISATION, valid=FINITE_POSITIVE)
    ema_max_decay: float = option(
        0.9999, "the EMA decay after warm-up", OPTIMISATION, valid=Range(lambda v: 0 < v <= 1, "in (0, 1]")
    )
    mixed_precision: str | None = option(
        None,
        "autocast precision (unset: accelerate's own setting where it names one, from `accelerate launch "
        "--mixed_precision`, its config file or ACCELERATE_MIXED_PRECISION; else the preset's; else no)",
        OPTIMISATION,
        choices=MIXED_PRECISION,
    )
    compile: bool | None = option(
        None,
        "torch.compile the UNet (default: on for runs of at least {cuda:,} optimizer steps on a GPU, or {cpu:,} "
        "on a CPU where Inductor finds a C++ compiler; a first run compiles for one to two minutes, later runs "
        "reuse Inductor's cache)".format(**COMPILE_MIN_STEPS),
        OPTIMISATION,
    )
    compile_mode: str = option(
        "default",
        "torch.compile mode with --compile; 'reduce-overhead' replays CUDA graphs, which removes the "
        "kernel-launch cost that bounds small batches on a GPU",
        OPTIMISATION,
        choices=COMPILE_MODES,
    )
    channels_last: bool = option(False, "channels_last memory format", OPTIMISATION)
    cudnn_benchmark: bool = option(
        True,
        "on a GPU, let cuDNN time its convolution algorithms for the step's fixed shapes on first use and keep "
        "the fastest (as EDM's --bench; --no-cudnn_benchmark uses cuDNN's heuristic choice)",
        OPTIMISATION,
    )
    attention: str = option(
        "auto",
        "attention kernel: PyTorch's fused scaled_dot_product_attention ('sdpa'), diffusers' classic "
        "baddbmm + softmax + bmm processor ('classic'), or 'auto': per layer, classic on CPU for small score "
        "matrices, sdpa everywhere else",
        OPTIMISATION,
        choices=ATTENTION_KERNELS,
    )
    num_cpu_threads: int | None = option(
        None,
        "torch threads per process on CPU (unset: the cores divided among the processes; a plain "
        "`accelerate launch` on a machine without GPUs would otherwise leave one thread)",
        OPTIMISATION,
        valid=AT_LEAST_1,
    )
    seed: int = option(
        0,
        "seed of all randomness",
        OPTIMISATION,
        valid=Range(lambda v: 0 <= v <= MAX_SEED, f"between 0 and {MAX_SEED}"),
    )
    # outputs, checkpoints, logging
    output_dir: str | None = option(None, "the run's folder: checkpoints, logs and the pipeline", OUTPUTS)
    overwrite_output_dir: bool = option(
        False, "train into an --output_dir that already holds a run or other files", OUTPUTS
    )
    checkpointing_steps: int = option(500, "save a resumable checkpoint every N steps", OUTPUTS, valid=AT_LEAST_1)
    checkpoints_total_limit: int | None = option(2, "keep at most N checkpoints", OUTPUTS, valid=AT_LEAST_1)
    resume_from_checkpoint: str | None = option(None, "'latest' or a checkpoint folder", OUTPUTS)
    allow_inexact_resume: bool = option(
        False,
        "resume a checkpoint written with another process count, batch size, accumulation or data (it goes on, "
        "but not as the uninterrupted run would have)",
        OUTPUTS,
    )
    save_images_steps: int = option(500, "save a sample grid every N steps", OUTPUTS, valid=AT_LEAST_1)
    save_images_epochs: int | None = option(
        None, "save a sample grid every N epochs instead of every --save_images_steps", OUTPUTS, valid=AT_LEAST_1
    )
    num_sample_images: int = option(
        20, "images in each sample grid", OUTPUTS, valid=AT_LEAST_1, aliases=("--eval_batch_size",)
    )
    sample_scheduler: str = option("dpmsolver", "sampler for the sample grids", OUTPUTS, choices=SAMPLE_SCHEDULERS)
    ddpm_num_inference_steps: int = option(25, "steps for the sample grids", OUTPUTS, valid=AT_LEAST_1)
    logging_steps: int = option(10, "read the loss (a host sync) every N steps", OUTPUTS, valid=AT_LEAST_1)
    logger: str = option(
        "tensorboard",
        "experiment tracker (Accelerate's; 'all': every one installed) for the loss, learning rate, EMA decay, "
        "sample grids and options",
        OUTPUTS,
        choices=LOGGERS,
        aliases=("--report_to",),
    )
    logging_dir: str = option("logs", "the tracker's folder inside --output_dir", OUTPUTS)
    tracker_project_name: str | None = option(
        None, "the project (run name) the trackers log under (unset: --output_dir's folder name)", OUTPUTS
    )
    # hub
    push_to_hub: bool = option(False, "push the final pipeline folder to the Hub", HUB)
    hub_model_id: str | None = option(None, "the Hub repo to push to (unset: --output_dir's folder name)", HUB)
    hub_private_repo: bool = option(False, "create the Hub repo as private", HUB)
    hub_token: str | None = option(None, "a Hub token with write access (prefer HF_TOKEN)", HUB, secret=True)
    hub_strategy: str = option(
        "end",
        "what --push_to_hub pushes: end (the final pipeline), every_save (also each checkpoint's pipeline, to main) "
        "or checkpoint (also each checkpoint's pipeline, to a branch step-N); never optimizer state",
        HUB,
        choices=("end", "every_save", "checkpoint"),
    )

    @property
    def label_column_names(self) -> tuple[str, ...]:
        """`--label_columns` split at commas; () when not given."""
        return tuple(name.strip() for name in self.label_columns.split(",")) if self.label_columns else ()

    def public_dict(self) -> dict[str, Any]:
        """The options as a JSON-able dict without secrets (for run records and logs)."""
        values = dataclasses.asdict(self)
        for spec in dataclasses.fields(self):
            if spec.metadata["secret"]:
                values.pop(spec.name)
        return values


def options() -> Iterator[dataclasses.Field]:
    """The fields of `TrainingConfig`, each one command-line option."""
    return iter(dataclasses.fields(TrainingConfig))


def option_type(spec: dataclasses.Field) -> type:
    """`int`, `float`, `str` or `bool`: the field's type without its `| None`."""
    kinds = getattr(spec.type, "__args__", (spec.type,))
    return next(kind for kind in kinds if kind is not type(None))


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


def resolve_config(given: Mapping[str, Any], conditional: bool) -> TrainingConfig:
    """Preset defaults, then every option in `given` (those the user gave; None counts as not given);
    derived values (output_dir, tracker_project_name, hub_model_id) filled in.

    `--num_epochs` without `--max_train_steps` replaces the preset's step count; with both, the steps win.
    """
    given = {key: value for key, value in given.items() if value is not None}
    preset = get_preset(given.get("preset", CONDITIONAL_PRESET if conditional else UNCONDITIONAL_PRESET))
    check_given(given, conditional)
    values: dict[str, Any] = {**preset.training}
    if "num_epochs" in given and "max_train_steps" not in given:
        values.pop("max_train_steps", None)
    values.update(given)
    values["preset"], values["conditional"] = preset.name, conditional
    if conditional:  # autoguidance and self-guidance are unconditional presets' defaults; conditional models use CFG
        values.pop("autoguidance_scale", None)
        values.pop("self_guidance_clusters", None)
    if values.get("output_dir") is None:
        suffix = "-cond" if conditional and preset.name != CONDITIONAL_PRESET else ""
        values["output_dir"] = f"ddpm-{preset.name}{suffix}-output"
    if not values.get("tracker_project_name"):
        values["tracker_project_name"] = Path(values["output_dir"]).resolve().name
    if values.get("push_to_hub") and not values.get("hub_model_id"):  # as diffusers' example: the folder's name
        values["hub_model_id"] = Path(values["output_dir"]).resolve().name
    config = TrainingConfig(**values)
    validate(config)
    return config


def check_given(given: Mapping[str, Any], conditional: bool) -> None:
    """Options that cannot be given together, or not for this kind of model."""
    if "save_images_epochs" in given and "save_images_steps" in given:
        raise UserInputError("give --save_images_steps or --save_images_epochs, not both")
    if conditional:
        for spec in options():
            if spec.metadata["unconditional_only"] and spec.name in given:
                raise UserInputError(
                    f"--{spec.name} is for unconditional models; class-conditional ones use classifier-free guidance"
                )


def validate(config: TrainingConfig) -> None:
    """Reject option values that cannot work, before any work starts: each option's own range, then the
    rules that tie several together."""
    for spec in options():
        value, valid = getattr(config, spec.name), spec.metadata["valid"]
        if valid is not None and value is not None and not valid.accepts(value):
            raise UserInputError(f"--{spec.name} must be {valid.phrase}, got {value}")
    if config.lr_scheduler == "polynomial" and config.learning_rate <= POLYNOMIAL_LR_END:
        raise UserInputError(
            f"--lr_scheduler polynomial decays to {POLYNOMIAL_LR_END:g}: --learning_rate must be larger, "
            f"got {config.learning_rate:g}"
        )
    if config.ddpm_num_inference_steps > config.ddpm_num_steps:
        raise UserInputError(
            f"--ddpm_num_inference_steps {config.ddpm_num_inference_steps} is more than the "
            f"--ddpm_num_steps {config.ddpm_num_steps} the model is trained for"
        )
    if config.self_guidance_clusters and config.autoguidance_scale != 1:
        raise UserInputError(
            "choose one guidance: --autoguidance_scale (a guide network) or --self_guidance_clusters (k-means "
            "clusters); pass --self_guidance_clusters 0 or --autoguidance_scale 1"
        )
    if config.self_guidance_clusters and config.streaming:
        raise UserInputError("--self_guidance_clusters clusters the whole dataset in memory; drop --streaming")
    if config.timestep_sampling == "importance" and config.snr_gamma is None:
        raise UserInputError("--timestep_sampling importance draws timesteps by the Min-SNR weights: give --snr_gamma")
    graphs = config.compile is not False and config.compile_mode in CUDA_GRAPH_MODES
    if graphs and config.gradient_accumulation_steps > 1:
        raise UserInputError(
            f"--compile_mode {config.compile_mode} replays CUDA graphs, which reuse the gradient buffers of every "
            "micro-batch (PyTorch issues #96693, #169545): use --gradient_accumulation_steps 1 or --compile_mode "
            "default / max-autotune-no-cudagraphs (or --no-compile)"
        )
    if config.hub_token is not None and config.logger in COMMAND_LINE_TRACKERS:
        raise UserInputError(
            f"--hub_token cannot go with --logger {config.logger}, which records the command line and so the token; "
            "drop --hub_token and set HF_TOKEN or run `hf auth login`"
        )
    if config.push_to_hub:
        check_push_target(config.hub_model_id, None)
    if config.hub_strategy != "end" and not config.push_to_hub:
        raise UserInputError(f"--hub_strategy {config.hub_strategy} pushes to the Hub: add --push_to_hub")
    columns = config.label_column_names
    if config.label_columns is not None and (not 1 <= len(columns) <= 2 or not all(columns)):
        raise UserInputError(
            "--label_columns takes one column name or two comma-separated (e.g. digit,color), "
            f"got {config.label_columns!r}"
        )
    if config.conditional and len(columns) == 2 and config.streaming:
        raise UserInputError("two --label_columns need the in-memory path (drop --streaming)")
    if config.max_train_steps is None and config.num_epochs is None:
        raise UserInputError("give --max_train_steps or --num_epochs")

"""The one Accelerate training loop behind `ddpm-zoo train` and the two training scripts.

Each optimizer step minimises the DDPM "simple" objective (Ho et al., 2020, eq. 14),
|| target - model(x_t, t[, c]) ||^2 with x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (eq. 4),
where the target is eps, v (Salimans & Ho, 2022) or x_0; with `--variance_type learned_range` the
network also outputs its variance and the loss is Improved DDPM's hybrid L_simple + lambda L_vlb
(`ddpm_zoo.objectives`). Conditional runs replace the label with a null class with probability
`cond_drop_prob` (classifier-free guidance, Ho & Salimans, 2022).
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, broadcast, broadcast_object_list, set_seed
from diffusers import ModelMixin, UNet2DModel
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from ddpm_zoo import data as data_lib
from ddpm_zoo.cards import TrainingSummary, render_model_card
from ddpm_zoo.checkpoints import (
    CHECKPOINT_PREFIX,
    LOSS_LOG,
    RUN_RECORD,
    TrainingProgress,
    append_loss_row,
    as_json,
    check_exact_resume,
    check_output_dir,
    check_resumable,
    claim_output_dir,
    complete_checkpoints,
    load_checkpoint,
    load_guide,
    read_progress,
    remove_checkpoint,
    remove_leftovers,
    resolve_resume_path,
    save_checkpoint,
    start_loss_log,
    unet_config_record,
    write_atomically,
)
from ddpm_zoo.clustering import cluster_images
from ddpm_zoo.config import COMPILE_MIN_STEPS, CUDA_GRAPH_MODES, TrainingConfig, load_unet_config
from ddpm_zoo.errors import TrainingStopped, UserInputError
from ddpm_zoo.objectives import (
    IMPORTANCE_UNIFORM_SHARE,
    DiffusionTerms,
    diffusion_loss,
    hybrid_loss,
    importance_proposal,
    min_snr_weights,
    noise_scheduler,
    training_target,
    with_variance_channels,
)
from ddpm_zoo.pipelines import (
    ClassConditionalDDPMPipeline,
    PointDiffusionPipeline,
    UnconditionalDDPMPipeline,
    joint_label_index,
)
from ddpm_zoo.presets import Preset, get_preset
from ddpm_zoo.publish import create_push_repo, push_pipeline_folder, run_files, save_pipeline_folder
from ddpm_zoo.scatter import scatter
from ddpm_zoo.schedulers import make_scheduler
from ddpm_zoo.snapshots import SnapshotPusher
from ddpm_zoo.stopping import StopRequest
from ddpm_zoo.visualize import grid_colors, loss_curve_png, make_grid

logger = get_logger("ddpm_zoo")  # Accelerate's: each message once, from the main process

# Trackers whose `log_images` takes one image per key; TensorBoard takes an NHWC batch, the others a list.
SINGLE_IMAGE_TRACKERS = ("aim", "clearml")

IN_MEMORY_LIMIT_BYTES = 4 * 1024**3


@dataclass
class PreparedData:
    """Batches (in memory or streaming) plus what the model needs to know about the data."""

    batches: data_lib.InMemoryBatches | data_lib.StreamingBatches
    plan: data_lib.EpochIndexPlan
    class_names: tuple[str, ...]
    cluster_sizes: tuple[int, ...] = ()
    color_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """The labels the UNet is conditioned on: classes, or k-means clusters for self-guidance."""
        return len(self.cluster_sizes) or len(self.class_names)

    @property
    def num_class_embeds(self) -> int:
        """UNet class-embedding rows: one per (class, color) pair, each label with its null value appended."""
        return (self.num_classes + 1) * (len(self.color_names) + 1)


def resolve_unet_config(config: TrainingConfig, preset: Preset) -> dict:
    """The preset's network config (or `--model_config_name_or_path`); a UNet's at the chosen resolution,
    checked against its downsampling factor."""
    unet_config = (
        load_unet_config(config.model_config_name_or_path) if config.model_config_name_or_path else dict(preset.unet)
    )
    if preset.network is not UNet2DModel:
        return with_variance_channels(unet_config, config.variance_type)
    if config.resolution is not None:
        unet_config["sample_size"] = config.resolution
    unet_config.setdefault("sample_size", 32)
    factor = 2 ** (len(unet_config.get("block_out_channels", (0,) * 4)) - 1)
    if unet_config["sample_size"] % factor:
        raise UserInputError(
            f"--resolution {unet_config['sample_size']} is not divisible by the UNet's downsampling factor {factor}"
        )
    return with_variance_channels(unet_config, config.variance_type)


def warn_missing_tracker(logger_name: str, accelerator: Accelerator) -> None:
    """Say so when the tracker asked for is not installed: Accelerate drops it, and the loss goes to loss.csv only."""
    if logger_name != "none" and not accelerator.log_with:
        missing = "no tracker is" if logger_name == "all" else f"{logger_name} is not"
        logger.warning("--logger %s: %s installed, so the loss goes to loss.csv only", logger_name, missing)


def tracker_config(values: dict) -> dict:
    """Options as Accelerate's `init_trackers` takes them: bool, int, float and str as they are (numbers stay
    numbers), None and anything else as JSON text."""
    return {key: v if isinstance(v, bool | int | float | str) else json.dumps(v) for key, v in values.items()}


def log_sample_grid(trackers: Iterable, grid: Image.Image, step: int) -> None:
    """Send the grid through each tracker's own image logging (Accelerate's `log_images`), where it has one."""
    image = np.asarray(grid.convert("RGB"))
    for tracker in trackers:
        if not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": image[None]}, step=step, dataformats="NHWC")
        elif tracker.name in SINGLE_IMAGE_TRACKERS:
            tracker.log_images({"samples": image}, step=step)
        else:
            tracker.log_images({"samples": [image]}, step=step)


@torch.no_grad()
def additive_label_embedding(unet: UNet2DModel, num_classes: int, num_colors: int) -> None:
    """Project the joint (class, color) embedding table onto the sums a_class + b_color, in place: its least-
    squares fit, row mean + column mean - grand mean over the (num_classes + 1) x (num_colors + 1) grid.

    Each row then learns from every image of its class and every image of its color, not only from the images
    of its pair, while the table stays the UNet's own `class_embedding` (a plain `UNet2DModel`)."""
    table = unet.class_embedding.weight.view(num_classes + 1, num_colors + 1, -1)
    fitted = table.mean(1, keepdim=True) + table.mean(0, keepdim=True) - table.mean((0, 1), keepdim=True)
    table.copy_(fitted)


def build_network(network: type[ModelMixin], network_config: dict, num_class_embeds: int | None) -> ModelMixin:
    """The preset's network (a UNet2DModel, or the toy's PointDenoiser) from its config; conditional models get
    num_classes + 1 class embeddings (the last is the null class)."""
    try:
        return network(**{**network_config, "num_class_embeds": num_class_embeds})
    except (TypeError, ValueError) as error:
        raise UserInputError(f"invalid {network.__name__} config: {error}") from None


# Largest attention score matrix per image (heads x tokens^2) for which 'auto' takes the classic kernel on CPU;
# benchmarks/attention_kernels.py measures both kernels on either side of it.
CLASSIC_ATTENTION_MAX_SCORES = 2**17


def attention_layers(unet: UNet2DModel) -> Iterator[tuple[Attention, int]]:
    """Every attention layer with its number of tokens (pixels at its level of the UNet); none in other networks."""
    if not isinstance(unet, UNet2DModel):
        return
    size = unet.config.sample_size
    pixels = size * size if isinstance(size, int) else size[0] * size[1]
    levels = len(unet.down_blocks)
    blocks = [*((block, i) for i, block in enumerate(unet.down_blocks)), (unet.mid_block, levels - 1)]
    blocks += [(block, levels - 1 - j) for j, block in enumerate(unet.up_blocks)]
    for block, level in blocks:
        for module in block.modules() if block is not None else ():
            if isinstance(module, Attention):
                yield module, pixels // 4**level


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor would use for CPU kernels, or None where it finds none."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        return get_cpp_compiler()
    except Exception:  # Inductor raises its own error types when the search fails
        return None


def compiles_by_default(device: torch.device, max_train_steps: int) -> bool:
    """Whether a run without --compile / --no-compile compiles its UNet: long enough to win back a cold compile,
    and Inductor has its code generator there (Triton on CUDA, a C++ compiler on a CPU)."""
    if max_train_steps < COMPILE_MIN_STEPS.get(device.type, math.inf):
        return False
    return device.type == "cuda" or cpp_compiler() is not None


def select_attention(unet: UNet2DModel, kernel: str, device: torch.device) -> str:
    """Give every attention layer the chosen kernel and say which were used ('classic', 'sdpa' or both).

    Same math either way, softmax(Q K^T / sqrt(d)) V (Vaswani et al., 2017, eq. 1). 'auto' takes SDPA except
    on CPU for small score matrices, where PyTorch's fused SDPA backward is slow and diffusers' `AttnProcessor`
    computes the same with baddbmm + softmax + bmm, whose backward is plain matmuls.
    """
    used = set()
    for module, tokens in attention_layers(unet):
        choice = kernel
        if kernel == "auto":
            small = module.heads * tokens**2 <= CLASSIC_ATTENTION_MAX_SCORES
            choice = "classic" if device.type == "cpu" and small else "sdpa"
        module.set_processor(AttnProcessor() if choice == "classic" else AttnProcessor2_0())
        used.add(choice)
    return "+".join(sorted(used)) or "none"


def prepare_data(config: TrainingConfig, unet_channels: int, accelerator: Accelerator, preset: Preset) -> PreparedData:
    """Load the source, then decode it once into memory (or stream it when it is large).

    Conditional training needs labels in 0..num_classes-1, where num_classes comes from the dataset's
    class names, else from the preset's; a second label column (the color) needs a ClassLabel column, or
    the colorizer's colors. Self-guidance labels each image with its k-means cluster.
    """
    if preset.data_kind == "points":
        return prepare_points(config, accelerator)
    columns = config.label_column_names if config.conditional else ()
    color_column = columns[1] if len(columns) == 2 else None
    colorizer_colors = config.colorize and color_column == data_lib.COLOR_COLUMN
    source = data_lib.load_image_source(
        config.dataset_name,
        config.train_data_dir,
        config.dataset_config_name,
        config.image_column,
        columns[0] if columns else None,
        config.cache_dir,
        None if colorizer_colors else color_column,
    )
    class_names = (source.class_names or preset.class_names) if config.conditional else ()
    if config.conditional and not class_names:
        raise UserInputError("conditional training needs class names: a ClassLabel label column or a preset's classes")
    color_names = data_lib.COLOR_NAMES if colorizer_colors else source.color_names
    if color_column is not None and not color_names:
        raise UserInputError(f"the second label column {color_column!r} needs class names: make it a ClassLabel column")
    source_channels = 1 if config.colorize else unet_channels
    size = data_lib.in_memory_bytes(len(source.dataset), unet_channels, config.resolution)  # what stays in memory
    plan_args = (config.train_batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
    if config.streaming or size > IN_MEMORY_LIMIT_BYTES:
        if config.colorize:
            raise UserInputError("--colorize needs the in-memory path (drop --streaming)")
        if config.self_guidance_clusters:
            raise UserInputError(
                f"--self_guidance_clusters needs the whole dataset in memory; {size / 2**30:.1f} GiB is over the "
                f"{IN_MEMORY_LIMIT_BYTES / 2**30:.0f} GiB limit"
            )
        plan = data_lib.EpochIndexPlan(len(source.dataset), *plan_args)
        batches = data_lib.StreamingBatches(
            source,
            plan,
            config.resolution,
            unet_channels,
            config.convert_channels,
            num_classes=len(class_names),
            num_workers=config.dataloader_num_workers,
            skip_bad_images=config.skip_bad_images,
        )
        return PreparedData(batches, plan, class_names)
    decoded = data_lib.decode_dataset(
        source,
        config.resolution,
        source_channels,
        config.convert_channels,
        config.skip_bad_images,
        with_labels=config.conditional,
        needed_by="the colorizer" if config.colorize else "the model",
    )
    if decoded.skipped:
        logger.warning("skipped %d unreadable images", decoded.skipped)
    if config.colorize:
        decoded = data_lib.apply_colorizer(decoded, config.seed)
    if decoded.images.shape[1] != unet_channels:
        raise UserInputError(f"the data has {decoded.images.shape[1]} channel(s) but the model expects {unet_channels}")
    if decoded.labels is not None:
        data_lib.check_labels(decoded.labels, len(class_names))
    if color_column is not None:
        data_lib.check_labels(decoded.color_labels, len(color_names), f"{color_column} classes")
        decoded = dataclasses.replace(decoded, labels=torch.stack([decoded.labels, decoded.color_labels], dim=1))
    cluster_sizes: tuple[int, ...] = ()
    if config.self_guidance_clusters:
        assignments = cluster_images(decoded.images, config.self_guidance_clusters, config.seed).assignments
        if accelerator.num_processes > 1:  # every process must train on the main process's clusters
            assignments = broadcast(assignments.to(accelerator.device), from_process=0).cpu()
        decoded = dataclasses.replace(decoded, labels=assignments)
        cluster_sizes = tuple(torch.bincount(assignments, minlength=config.self_guidance_clusters).tolist())
    plan = data_lib.EpochIndexPlan(len(decoded.images), *plan_args)
    batches = data_lib.InMemoryBatches(decoded, plan, accelerator.device)
    return PreparedData(batches, plan, class_names, cluster_sizes, color_names if color_column else ())


def first_label_column(config: TrainingConfig) -> str | None:
    """The (first) label column `--label_columns` names, or None."""
    return config.label_column_names[0] if config.label_column_names else None


def prepare_points(config: TrainingConfig, accelerator: Accelerator) -> PreparedData:
    """2-D points (generated, or read from a table) held in memory; conditional training needs their labels."""
    found = data_lib.load_point_data(
        config.dataset_name, config.train_data_dir, first_label_column(config), config.seed, config.cache_dir
    )
    if config.conditional and len(config.label_column_names) > 1:
        raise UserInputError("2-D point models take one label column; --label_columns names two")
    if config.self_guidance_clusters or (config.autoguidance_scale != 1 and not config.conditional):
        raise UserInputError("self-guidance and autoguidance are for images; 2-D point models sample without them")
    if config.conditional and found.labels is None:
        raise UserInputError(
            "conditional training needs labelled points: --dataset_name eight-gaussians or two-moons, or a table "
            "with a label column"
        )
    if found.labels is not None and config.conditional:
        data_lib.check_labels(found.labels, len(found.class_names))
    else:
        found = dataclasses.replace(found, labels=None, class_names=())
    plan_args = (config.train_batch_size, config.seed, accelerator.process_index, accelerator.num_processes)
    plan = data_lib.EpochIndexPlan(len(found.images), *plan_args)
    return PreparedData(data_lib.InMemoryBatches(found, plan, accelerator.device), plan, found.class_names)


def build_optimizer(
    parameters: Iterable[torch.nn.Parameter], config: TrainingConfig, device: torch.device
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter, 2019, Algorithm 2) with the options' hyper-parameters, fused into one kernel
    on CUDA and CPU instead of a loop of small ops per parameter."""
    return torch.optim.AdamW(
        parameters,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
        fused=device.type in ("cuda", "cpu"),
    )


def parameters_finite(model: torch.nn.Module) -> bool:
    """True when no weight is NaN or infinite (one host sync)."""
    return bool(torch.stack([p.detach().abs().amax() for p in model.parameters()]).isfinite().all())


def guide_step(config: TrainingConfig, max_train_steps: int) -> int | None:
    """The optimizer step whose EMA weights become the autoguidance guide; None without autoguidance."""
    if config.conditional or config.autoguidance_scale == 1:
        return None
    return max(1, round(config.autoguidance_guide_fraction * max_train_steps))


def step_seed(seed: int, step: int, micro_step: int, process_index: int) -> int:
    """All randomness of one micro-batch (noise, timesteps, flips, label drops, dropout) comes from
    this seed, so a resumed run draws exactly what an uninterrupted one would. NumPy's SeedSequence
    hashes the four numbers, so no two micro-batches share a seed whatever the accumulation or process count."""
    return int(np.random.SeedSequence([seed, step, micro_step, process_index]).generate_state(1, np.uint64)[0])


@dataclass
class LossMeter:
    """Loss summed on the device between reads, and the running average of what was read."""

    running: torch.Tensor
    micro_batches: int = 0
    last: float | None = None
    total: float = 0.0
    count: int = 0

    @property
    def average(self) -> float | None:
        return self.total / self.count if self.count else None

    def restore(self, progress: TrainingProgress) -> None:
        """Continue the loss a checkpoint recorded, so a resumed run reports the whole run's loss."""
        self.last, self.total, self.count = progress.loss_last, progress.loss_total, progress.loss_count

    def steps_in_window(self, config: TrainingConfig) -> int:
        return max(1, self.micro_batches // config.gradient_accumulation_steps)

    def close_window(self, loss: float) -> None:
        self.last = loss
        self.total += loss * self.micro_batches
        self.count += self.micro_batches
        self.running.zero_()
        self.micro_batches = 0


class Trainer:
    """Builds the model, data, optimizer and EMA under Accelerate and runs the loop."""

    def __init__(self, config: TrainingConfig):
        self.config = config
        self.preset = get_preset(config.preset)
        self.output_dir = Path(config.output_dir)
        self.resume = resolve_resume_path(config.resume_from_checkpoint, self.output_dir)
        resuming = config.resume_from_checkpoint is not None
        check_output_dir(self.output_dir, config.overwrite_output_dir, resuming, self.resume)
        unet_config = resolve_unet_config(config, self.preset)
        config.resolution = unet_config.get("sample_size")
        project = ProjectConfiguration(
            project_dir=str(self.output_dir), logging_dir=str(self.output_dir / config.logging_dir)
        )
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=accelerator_precision(config, self.preset),
            log_with=None if config.logger == "none" else config.logger,
            project_config=project,
            cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available(),
        )
        config.mixed_precision = self.accelerator.mixed_precision  # the effective one, for the record and card
        warn_missing_tracker(config.logger, self.accelerator)
        if self.accelerator.device.type == "cpu":
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
            torch.set_num_threads(config.num_cpu_threads or max(1, cores // self.accelerator.num_processes))
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
        self.data = prepare_data(config, unet_config.get("in_channels", 3), self.accelerator, self.preset)
        set_seed(config.seed)
        self.labelled = config.conditional or config.self_guidance_clusters > 0
        self.unet = build_network(
            self.preset.network, unet_config, self.data.num_class_embeds if self.labelled else None
        )
        if self.data.color_names:
            additive_label_embedding(self.unet, self.data.num_classes, len(self.data.color_names))
        self.preset_network = as_json(unet_config) == as_json(
            with_variance_channels(self.preset.unet, config.variance_type)
        )
        self.exact_resume = {
            "num_processes": self.accelerator.num_processes,
            "train_batch_size": config.train_batch_size,
            "gradient_accumulation_steps": config.gradient_accumulation_steps,
            "data": {
                "dataset_name": config.dataset_name,
                "dataset_config_name": config.dataset_config_name,
                "train_data_dir": str(Path(config.train_data_dir).resolve()) if config.train_data_dir else None,
                "images": self.data.plan.num_samples,
            },
        }
        self.lock: IO[str] | None = None
        if self.resume is not None:
            check_resumable(self.resume, self.unet, config.use_ema)
            check_exact_resume(self.resume, self.exact_resume, config.allow_inexact_resume)
        self.noise_scheduler = noise_scheduler(
            self.preset.scheduler,
            config.ddpm_num_steps,
            config.ddpm_beta_schedule,
            config.prediction_type,
            config.variance_type,
        )
        self.diffusion_terms = (
            DiffusionTerms(self.noise_scheduler, self.accelerator.device)
            if config.variance_type == "learned_range"
            else None
        )
        steps_per_epoch = math.ceil(self.data.plan.batches_per_epoch / config.gradient_accumulation_steps)
        self.max_train_steps = config.max_train_steps or config.num_epochs * steps_per_epoch
        if self.resume is not None and read_progress(self.resume).global_step > self.max_train_steps:
            raise UserInputError(
                f"--resume_from_checkpoint {self.resume} is past the run's {self.max_train_steps} steps; "
                "raise --max_train_steps or --num_epochs"
            )
        self.save_images_steps = (
            config.save_images_epochs * steps_per_epoch if config.save_images_epochs else config.save_images_steps
        )
        self.guide_step = guide_step(config, self.max_train_steps)
        if config.compile is None:
            # Not under FSDP, which would wrap the compiled module: there --compile stays the user's choice.
            sharded = self.accelerator.distributed_type == DistributedType.FSDP
            config.compile = not sharded and compiles_by_default(self.accelerator.device, self.max_train_steps)
            if config.compile:
                logger.info("torch.compile on: the default for a run this long (--no-compile runs eagerly)")
        self.guide_unet: ModelMixin | None = None
        self.hub_repo_id = prepare_push_repo(config, self.accelerator)
        pushes_snapshots = self.hub_repo_id is not None and config.hub_strategy != "end"
        self.snapshots = (
            SnapshotPusher(config.hub_strategy, self.hub_repo_id, config.hub_private_repo, config.hub_token)
            if pushes_snapshots and self.accelerator.is_main_process
            else None
        )
        self.meter = LossMeter(torch.zeros((), device=self.accelerator.device))
        self._build_optimization()

    def _build_optimization(self) -> None:
        config, accelerator = self.config, self.accelerator
        if config.channels_last:
            self.unet = self.unet.to(memory_format=torch.channels_last)
        self.attention = select_attention(self.unet, config.attention, accelerator.device)
        self.ema = (
            EMAModel(
                self.unet.parameters(),
                decay=config.ema_max_decay,
                use_ema_warmup=True,
                inv_gamma=config.ema_inv_gamma,
                power=config.ema_power,
                foreach=True,
                model_cls=type(self.unet),
                model_config=self.unet.config,
            )
            if config.use_ema
            else None
        )
        optimizer = build_optimizer(self.unet.parameters(), config, accelerator.device)
        # The schedule is stepped once per optimizer step by this loop (not wrapped by Accelerate), so
        # its length is the true number of optimizer steps whatever the number of processes
        # (diffusers issue #8384).
        self.lr_scheduler = get_scheduler(
            config.lr_scheduler,
            optimizer=optimizer,
            num_warmup_steps=config.lr_warmup_steps,
            num_training_steps=self.max_train_steps,
        )
        model = self.unet
        if config.compile:
            # diffusers' version checks are lru_cached; Dynamo traces through them and warns at each call site.
            warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
            model = torch.compile(self.unet, mode=config.compile_mode)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        accelerator.register_for_checkpointing(self.lr_scheduler)
        if self.ema is not None:
            self.ema.to(accelerator.device)
        self.noise_scheduler.alphas_cumprod = self.noise_scheduler.alphas_cumprod.to(accelerator.device)
        self.loss_weights = (
            min_snr_weights(self.noise_scheduler, config.prediction_type, config.snr_gamma).to(accelerator.device)
            if config.snr_gamma is not None
            else None
        )
        self.timestep_probs = self.importance_factors = None
        if config.timestep_sampling == "importance" and self.loss_weights is not None:
            self.timestep_probs = importance_proposal(self.loss_weights, IMPORTANCE_UNIFORM_SHARE)
            self.importance_factors = 1 / (self.loss_weights.numel() * self.timestep_probs)
            self.loss_weights = self.loss_weights * self.importance_factors

    # ----------------------------------------------------------------- checkpoints

    def save_checkpoint(self, step: int) -> Path:
        """Checkpoint the weights at `step`, which must be finite: weights that are not stop the run (exit 3)
        and are neither checkpointed nor published."""
        if not parameters_finite(self.unet):
            raise TrainingStopped(self.divergence_message(f"the weights became non-finite by step {step}"), 3)
        meter = self.meter
        progress = TrainingProgress(
            global_step=step,
            train_seconds=time.perf_counter() - self.start_time + self.resumed_seconds,
            loss_last=meter.last,
            loss_total=meter.total,
            loss_count=meter.count,
        )
        path = save_checkpoint(
            self.accelerator,
            self.ema,
            self.output_dir,
            progress,
            self.config.checkpoints_total_limit,
            {"unet_config": unet_config_record(self.unet), **self.exact_resume},
            guide=self.guide_unet,
        )
        self.last_checkpoint_step = step
        if self.snapshots is not None:
            self.snapshots.submit(path, step)
        return path

    # ----------------------------------------------------------------- sampling and saving

    def pipeline(self, scheduler=None) -> UnconditionalDDPMPipeline:
        unet = self.unet  # the module being trained, as unwrap_model(self.model) gives it
        scheduler = scheduler or self.noise_scheduler
        if self.preset.data_kind == "points":
            names = ",".join(self.data.class_names) or None
            return PointDiffusionPipeline(denoiser=unet, scheduler=scheduler, class_names=names)
        if self.config.conditional:
            return ClassConditionalDDPMPipeline(
                unet=unet,
                scheduler=scheduler,
                class_names=",".join(self.data.class_names),
                color_names=",".join(self.data.color_names) or None,
            )
        if self.data.cluster_sizes:
            return UnconditionalDDPMPipeline(
                unet=unet,
                scheduler=scheduler,
                cluster_sizes=list(self.data.cluster_sizes),
                self_guidance_scale=self.config.self_guidance_scale,
            )
        scale = self.config.autoguidance_scale if self.guide_unet is not None else 1.0
        return UnconditionalDDPMPipeline(
            unet=unet, scheduler=scheduler, guide_unet=self.guide_unet, autoguidance_scale=scale
        )

    def take_guide(self) -> None:
        """Keep a copy of the current EMA weights (the raw weights without EMA) as the autoguidance guide."""
        with self.ema_weights():
            guide = type(self.unet).from_config(self.unet.config)
            guide.load_state_dict({name: tensor.detach().float() for name, tensor in self.unet.state_dict().items()})
        self.keep_guide(guide)

    def keep_guide(self, guide: ModelMixin) -> None:
        """Hold `guide` frozen on the training device as the autoguidance guide."""
        self.guide_unet = guide.to(self.accelerator.device).eval().requires_grad_(False)

    def sample_grid(self):
        """A grid from the EMA weights at the pipeline's default guidance; conditional grids: one column per class
        (with colors, each row of the grid in one color)."""
        count = self.config.num_sample_images
        scheduler = make_scheduler(self.config.sample_scheduler, self.noise_scheduler.config)
        pipeline = self.pipeline(scheduler)
        pipeline.set_progress_bar_config(disable=True)
        generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        kwargs = {"generator": generator, "num_inference_steps": self.config.ddpm_num_inference_steps}
        model = self.accelerator.unwrap_model(self.model)
        model.eval()
        labels = [i % self.data.num_classes for i in range(count)] if self.config.conditional else None
        with self.ema_weights():
            if self.preset.data_kind == "points":
                found = pipeline(batch_size=None if labels else count, class_labels=labels, **kwargs).points
                picture = scatter(found, labels, title=f"{count} samples")
            elif labels:
                colors = grid_colors(len(labels), self.data.num_classes, len(self.data.color_names))
                images = pipeline(class_labels=labels, color_labels=colors, **kwargs).images
                picture = make_grid(images, self.data.num_classes)
            else:
                picture = make_grid(pipeline(batch_size=count, **kwargs).images)
        model.train()
        return picture

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Context in which the model holds the EMA weights."""
        if self.ema is None:
            yield
            return
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())
        try:
            yield
        finally:
            self.ema.restore(self.unet.parameters())

    def save_grid(self, step: int) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        grid = self.sample_grid()
        path = self.output_dir / "progress" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        log_sample_grid(self.accelerator.trackers, grid, step)
        return path

    def save_final_pipeline(self, summary: dict) -> None:
        """The publishable folder: EMA weights, pipeline.py, model_index.json, model card, sample grid, loss curve."""
        if not self.accelerator.is_main_process:
            return
        buffer = io.BytesIO()
        self.sample_grid().save(buffer, format="PNG")
        loss_png = loss_curve_png(self.output_dir / LOSS_LOG)
        config = self.config
        card_summary = TrainingSummary(
            preset=config.preset,
            conditional=config.conditional,
            dataset=config.train_data_dir or config.dataset_name,
            resolution=config.resolution,
            max_train_steps=summary["global_step"],
            total_batch_size=summary["total_batch_size"],
            learning_rate=config.learning_rate,
            mixed_precision=config.mixed_precision,
            hardware=summary["hardware"],
            wall_time_s=summary["wall_time_s"],
            final_loss=summary["final_loss"],
            num_processes=summary["num_processes"],
            prediction_type=config.prediction_type,
            snr_gamma=config.snr_gamma,
            timestep_sampling=config.timestep_sampling,
            class_names=self.data.class_names,
            color_names=self.data.color_names,
            local_dataset=config.train_data_dir is not None,
            autoguidance_scale=config.autoguidance_scale if self.guide_unet is not None else None,
            autoguidance_guide_step=self.guide_step if self.guide_unet is not None else None,
            self_guidance_clusters=len(self.data.cluster_sizes) or None,
            self_guidance_scale=config.self_guidance_scale if self.data.cluster_sizes else None,
            use_ema=config.use_ema,
            beta_schedule=config.ddpm_beta_schedule,
            num_train_timesteps=config.ddpm_num_steps,
            preset_network=self.preset_network,
            loss_curve=loss_png is not None,
            variance_type=config.variance_type,
        )
        card = render_model_card(card_summary, repo_id=self.hub_repo_id)
        summary = {**summary, "card": dataclasses.asdict(card_summary), "hub_model_id": self.hub_repo_id}
        extra = run_files(card, buffer.getvalue(), loss_png, summary)
        with self.ema_weights():
            save_pipeline_folder(self.pipeline(), self.output_dir, extra_files=extra)

    # ----------------------------------------------------------------- the loop

    def train(self) -> dict:
        """Resume or start, run the loop, checkpoint the last step and publish the pipeline folder."""
        config, accelerator = self.config, self.accelerator
        start_step = self.start()
        self.last_checkpoint_step = global_step = start_step
        accum = config.gradient_accumulation_steps
        meter = self.meter
        progress = tqdm(
            total=self.max_train_steps,
            initial=global_step,
            disable=not accelerator.is_local_main_process,
            desc="training",
            dynamic_ncols=True,
        )
        self.start_time = time.perf_counter()
        self.model.train()
        with StopRequest(accelerator.num_processes) as stop, contextlib.closing(progress):
            for global_step in self.optimizer_steps(start_step, meter):  # noqa: B007 (used after the loop)
                progress.update(1)
                self.after_step(global_step, meter, progress, stop)
        wall_time = time.perf_counter() - self.start_time + self.resumed_seconds
        if self.last_checkpoint_step != global_step:
            self.save_checkpoint(global_step)
        summary = {
            "preset": config.preset,
            "conditional": config.conditional,
            "global_step": global_step,
            "final_loss": meter.last,
            "avg_loss": meter.average,
            "wall_time_s": wall_time,
            "num_processes": accelerator.num_processes,
            "total_batch_size": config.train_batch_size * accelerator.num_processes * accum,
            "hardware": describe_hardware(accelerator),
            "attention_kernel": self.attention,
            "autoguidance": {"scale": self.config.autoguidance_scale, "guide_step": self.guide_step}
            if self.guide_unet is not None
            else None,
            "self_guidance": {"clusters": len(self.data.cluster_sizes), "scale": self.config.self_guidance_scale}
            if self.data.cluster_sizes
            else None,
        }
        self.save_final_pipeline(summary)
        # Drop the DistributedDataParallel wrapper while its process group exists: freed after
        # end_training destroys the group, its reducer can wait forever on a gloo worker thread.
        self.model = self.optimizer = None
        accelerator.free_memory()
        accelerator.end_training()
        return summary

    def start(self) -> int:
        """Lock the output folder, load the checkpoint to resume (weights, EMA, guide, loss so far), then
        remove what an interrupted run left, write the run record and start the trackers, so a checkpoint
        that cannot be loaded leaves the folder as it was (but for the lock file). Returns the step
        training starts from."""
        config, accelerator, resume = self.config, self.accelerator, self.resume
        self.lock = claim_output_dir(accelerator, self.output_dir)  # before reading: no run prunes it meanwhile
        state = load_checkpoint(accelerator, self.ema, resume) if resume else TrainingProgress()
        if accelerator.is_main_process:
            remove_leftovers(self.output_dir)
            if config.overwrite_output_dir and resume is None:  # ddpm-zoo's own checkpoints, no one else's
                for stale in complete_checkpoints(self.output_dir):
                    remove_checkpoint(stale)
            record = {
                **config.public_dict(),
                "cluster_sizes": list(self.data.cluster_sizes) or None,
                "class_names": list(self.data.class_names) if config.conditional else None,
                "color_names": list(self.data.color_names) or None,
            }
            write_atomically(self.output_dir / RUN_RECORD, json.dumps(record, indent=2))
            self.loss_log = start_loss_log(self.output_dir, state.global_step)
            accelerator.init_trackers(config.tracker_project_name, config=tracker_config(config.public_dict()))
        self.resumed_seconds = state.train_seconds
        self.meter.restore(state)
        if resume:
            guide = load_guide(resume)
            if guide is not None:
                self.keep_guide(guide)
            logger.info("resumed from %s at step %d", resume, state.global_step)
            if state.global_step == self.max_train_steps:
                logger.info("%s is the run's last step: publishing it without training", resume)
        return state.global_step

    def optimizer_steps(self, global_step: int, meter: "LossMeter") -> Iterator[int]:
        """The hot loop: micro-batches in plan order from `global_step` on; yields after each optimizer
        step (with its EMA update) until `max_train_steps`. The loss stays on the device in `meter`."""
        accum, process_index = self.config.gradient_accumulation_steps, self.accelerator.process_index
        micro = global_step * accum
        while global_step < self.max_train_steps:
            epoch, start_batch = divmod(micro, self.data.plan.batches_per_epoch)
            for images, labels in self.data.batches.epoch(epoch, start_batch):
                torch.manual_seed(step_seed(self.config.seed, global_step, micro % accum, process_index))
                meter.running += self.training_step(images, labels).detach()
                meter.micro_batches += 1
                micro += 1
                if not self.accelerator.sync_gradients:
                    continue
                if self.ema is not None:
                    self.ema.step(self.unet.parameters())
                global_step += 1
                yield global_step
                if global_step >= self.max_train_steps:
                    return

    def after_step(self, step: int, meter: "LossMeter", progress: tqdm, stop: StopRequest) -> None:
        """Logging, health checks, checkpoints and sample grids that fall due after optimizer step `step`.

        The loss is read from the device (a host sync) only every `logging_steps`. A pending signal is
        checked after every step: several processes agree on it through `StopRequest` (one integer over
        a CPU group, no device sync), so they all checkpoint the same step and stop together.
        """
        config, accelerator = self.config, self.accelerator
        if step == self.guide_step:
            self.take_guide()
        due_log = step % config.logging_steps == 0 or step == self.max_train_steps
        due_checkpoint = step % config.checkpointing_steps == 0
        signalled = stop.agreed()
        if due_log or due_checkpoint or signalled:
            loss = accelerator.reduce(meter.running / meter.micro_batches, reduction="mean").item()
            if not math.isfinite(loss):
                first = step - meter.steps_in_window(config) + 1
                message = self.divergence_message(f"loss became non-finite between steps {first} and {step}")
                raise TrainingStopped(message, exit_code=3)
            meter.close_window(loss)
            progress.set_postfix(loss=f"{loss:.4f}", avg_loss=f"{meter.average:.4f}")
            logs = {"loss": loss, "avg_loss": meter.average, "lr": self.lr_scheduler.get_last_lr()[0]}
            accelerator.log({**logs, **self.ema_log()}, step=step)
            if accelerator.is_main_process:
                seconds = time.perf_counter() - self.start_time + self.resumed_seconds
                decay = self.ema.cur_decay_value if self.ema is not None else None
                append_loss_row(self.loss_log, step, loss, logs["lr"], decay, seconds)
            if signalled:
                raise TrainingStopped(self.stop_message(step), 128 + signalled)
        if due_checkpoint:
            self.save_checkpoint(step)
        if step % self.save_images_steps == 0:
            self.save_grid(step)

    def ema_log(self) -> dict:
        return {"ema_decay": self.ema.cur_decay_value} if self.ema is not None and self.ema.cur_decay_value else {}

    def dropped_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Class-embedding rows of a batch's labels, each label replaced by its null value with probability
        `cond_drop_prob`, independently (classifier-free guidance training, Ho & Salimans, 2022, Algorithm 1)."""
        drop = torch.rand(labels.shape, device=labels.device) < self.config.cond_drop_prob
        kept = labels.masked_fill(drop, -1)
        classes, colors = (kept, None) if kept.dim() == 1 else (kept[:, 0], kept[:, 1])
        return joint_label_index(classes, colors, self.data.num_classes, len(self.data.color_names))

    def training_step(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """One micro-batch: noise the images (eq. 4), predict, regress the target (eq. 14)."""
        config, accelerator = self.config, self.accelerator
        clean = data_lib.to_model_space(images.to(accelerator.device, non_blocking=True))
        if config.random_flip:
            flip = torch.rand(clean.shape[0], device=clean.device) < 0.5
            clean = torch.where(flip.view(-1, *([1] * (clean.dim() - 1))), clean.flip(-1), clean)
        if config.channels_last:
            clean = clean.contiguous(memory_format=torch.channels_last)
        noise = torch.randn_like(clean)
        if self.timestep_probs is None:
            t = torch.randint(0, config.ddpm_num_steps, (clean.shape[0],), device=clean.device)
        else:
            t = torch.multinomial(self.timestep_probs, clean.shape[0], replacement=True)
        noisy = self.noise_scheduler.add_noise(clean, noise, t)
        class_labels = None
        if self.labelled:
            class_labels = self.dropped_labels(labels)
        if config.compile and config.compile_mode in CUDA_GRAPH_MODES:
            torch.compiler.cudagraph_mark_step_begin()  # a new step for the CUDA-graph replays
        with accelerator.accumulate(self.model):
            prediction = self.model(noisy, t, class_labels=class_labels).sample
            target = training_target(self.noise_scheduler, config.prediction_type, clean, noise, t)
            if self.diffusion_terms is None:
                loss = diffusion_loss(prediction, target, t, self.loss_weights)
            else:
                loss = hybrid_loss(
                    self.diffusion_terms,
                    prediction,
                    target,
                    config.prediction_type,
                    clean,
                    noisy,
                    t,
                    self.loss_weights,
                    self.importance_factors,
                )
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
            self.optimizer.step()
            if accelerator.sync_gradients:
                self.lr_scheduler.step()
                if self.data.color_names:
                    additive_label_embedding(self.unet, self.data.num_classes, len(self.data.color_names))
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def divergence_message(self, what: str) -> str:
        """`what` went wrong; the run stopped, where the last good checkpoint is, and what to try."""
        checkpoints = complete_checkpoints(self.output_dir)
        kept = f"last good checkpoint: {checkpoints[-1]}" if checkpoints else "no checkpoint was saved yet"
        return f"{what}; stopped, {kept}; nothing was published (try a lower --learning_rate or --mixed_precision no)"

    def stop_message(self, step: int) -> str:
        if step != self.last_checkpoint_step:
            path = self.save_checkpoint(step)
        else:
            path = self.output_dir / f"{CHECKPOINT_PREFIX}{step}"
        return f"interrupted at step {step}; saved {path}; continue with --resume_from_checkpoint latest"


def accelerator_precision(config: TrainingConfig, preset: Preset) -> str | None:
    """The precision to hand Accelerator: `--mixed_precision` where given; None (accelerate's own setting
    decides) where it is unset, or where it is only the preset's and accelerate's setting
    (ACCELERATE_MIXED_PRECISION, which `accelerate launch` sets from its flag or config file) names one."""
    accelerate_setting = (os.environ.get("ACCELERATE_MIXED_PRECISION") or "no").lower()
    if config.mixed_precision == preset.training.get("mixed_precision") and accelerate_setting != "no":
        return None
    return config.mixed_precision


def describe_hardware(accelerator: Accelerator) -> str:
    """E.g. "1 x NVIDIA H100 80GB HBM3", "1 x Apple GPU (MPS)" or "2 x CPU (AMD EPYC 7B13, 2 cores)"; no host
    names (cards are public)."""
    if accelerator.device.type == "cuda":
        name = torch.cuda.get_device_name(accelerator.device)
    elif accelerator.device.type == "mps":
        name = "Apple GPU (MPS)"
    else:
        name = f"CPU ({cpu_model()}, {os.cpu_count()} cores)"
    return f"{accelerator.num_processes} x {name}"


def cpu_model() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def prepare_push_repo(config: TrainingConfig, accelerator: Accelerator) -> str | None:
    """With --push_to_hub, create the Hub repo before the first step (as diffusers' example does), so a bad
    id, token or an unreachable Hub fails now, and return its full id for the card; every process learns
    the outcome, so none waits for a main process that gave up."""
    if not config.push_to_hub:
        return None
    outcome: list[tuple[str, str] | None] = [None]
    if accelerator.is_main_process:
        try:
            outcome = [("repo", create_push_repo(config.hub_model_id, config.hub_private_repo, config.hub_token))]
        except UserInputError as error:
            outcome = [("error", str(error))]
    broadcast_object_list(outcome, from_process=0)
    kind, value = outcome[0]
    if kind == "error":
        raise UserInputError(value)
    return value


def run_training(config: TrainingConfig) -> dict:
    """Train, save the pipeline folder, and push it when asked."""
    try:
        trainer = Trainer(config)
    except OSError as error:  # setting up writes nothing: a file or folder it reads is unusable
        raise UserInputError(
            f"cannot read {error.filename}: {error.strerror}" if error.filename else str(error)
        ) from None
    try:
        summary = trainer.train()
    finally:
        if trainer.lock is not None:  # the main process's lock on the output folder
            trainer.lock.close()
    if trainer.snapshots is not None:
        trainer.snapshots.finish()
    if trainer.hub_repo_id is not None and trainer.accelerator.is_main_process:
        try:
            push_pipeline_folder(
                config.output_dir, trainer.hub_repo_id, private=config.hub_private_repo, token=config.hub_token
            )
        except UserInputError as error:
            raise UserInputError(
                f"{error}; the trained pipeline is saved in {config.output_dir}: push it later with "
                f"`ddpm-zoo push {config.output_dir} {trainer.hub_repo_id}`"
            ) from None
    return summary

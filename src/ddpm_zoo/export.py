"""A training checkpoint as a publishable pipeline folder: the weights it holds (the EMA where the run kept
one), rebuilt into the pipeline its run publishes from the run record's options, with a model card, a sample
grid and the loss curve up to the checkpoint's step."""

import dataclasses
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, UNet2DModel
from safetensors.torch import load_file

from ddpm_zoo.cards import TrainingSummary, render_model_card
from ddpm_zoo.checkpoints import CHECKPOINT_PREFIX, EMA_FOLDER, GUIDE_FOLDER, LOSS_LOG, RUN_RECORD, STATE_FILE, as_json
from ddpm_zoo.config import TrainingConfig
from ddpm_zoo.errors import UserInputError
from ddpm_zoo.objectives import noise_scheduler, with_variance_channels
from ddpm_zoo.pipelines import ClassConditionalDDPMPipeline, UnconditionalDDPMPipeline
from ddpm_zoo.presets import get_preset
from ddpm_zoo.publish import run_files, save_pipeline_folder
from ddpm_zoo.schedulers import make_scheduler
from ddpm_zoo.visualize import grid_colors, loss_curve_png, make_grid

logger = logging.getLogger(__name__)

TRAINING_WEIGHTS = "model.safetensors"  # Accelerate's save_state: the weights being trained
UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"  # EMAModel.save_pretrained and UNet2DModel.save_pretrained
UNRECORDED_HARDWARE = "not recorded (exported from a checkpoint)"


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint of a ddpm-zoo run: its folder, its state file, and the run's options."""

    path: Path
    state: dict
    config: TrainingConfig
    cluster_sizes: tuple[int, ...]
    class_names: tuple[str, ...] = ()
    color_names: tuple[str, ...] = ()

    @property
    def step(self) -> int:
        return int(self.state["global_step"])

    @property
    def weights(self) -> Path:
        """The weights to publish: the EMA where the run kept one, else the training weights."""
        return self.path / EMA_FOLDER / UNET_WEIGHTS if self.config.use_ema else self.path / TRAINING_WEIGHTS


def read_checkpoint(path: Path) -> Checkpoint:
    """A checkpoint folder `checkpoint-N` that finished writing, in a run folder holding the run record."""
    if not path.is_dir() or not path.name.removeprefix(CHECKPOINT_PREFIX).isdigit():
        raise UserInputError(f"{path} is not a checkpoint folder (checkpoint-N in a training run's --output_dir)")
    if not (path / STATE_FILE).is_file():
        raise UserInputError(f"{path} is not a complete checkpoint: it has no {STATE_FILE}")
    record_path = path.parent / RUN_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read the run record {record_path} or {path / STATE_FILE}: {error}") from None
    fields = {field.name for field in dataclasses.fields(TrainingConfig)}
    config = TrainingConfig(**{key: value for key, value in record.items() if key in fields})
    checkpoint = Checkpoint(
        path,
        state,
        config,
        tuple(record.get("cluster_sizes") or ()),
        tuple(record.get("class_names") or ()),
        tuple(record.get("color_names") or ()),
    )
    if not checkpoint.weights.is_file():
        raise UserInputError(f"{path} is not a complete checkpoint: {checkpoint.weights.name} is missing")
    return checkpoint


def load_unet(config: dict, weights: Path) -> UNet2DModel:
    """A UNet2DModel of `config` holding the safetensors weights at `weights`."""
    unet = UNet2DModel.from_config(config)
    unet.load_state_dict(load_file(weights))
    return unet.eval()


def class_names(checkpoint: Checkpoint, num_classes: int) -> list[str]:
    """The run's class names where its record has as many, else the preset's, else the class indices."""
    for names in (checkpoint.class_names, get_preset(checkpoint.config.preset).class_names):
        if len(names) == num_classes:
            return list(names)
    return [str(index) for index in range(num_classes)]


def run_scheduler(config: TrainingConfig) -> DDPMScheduler:
    """The run's noise schedule, as training built it."""
    return noise_scheduler(
        get_preset(config.preset).scheduler,
        config.ddpm_num_steps,
        config.ddpm_beta_schedule,
        config.prediction_type,
        config.variance_type,
    )


def rebuild_pipeline(checkpoint: Checkpoint) -> DiffusionPipeline:
    """The pipeline the run publishes, with the checkpoint's weights (and autoguidance guide, once taken)."""
    config = checkpoint.config
    unet = load_unet(checkpoint.state["unet_config"], checkpoint.weights)
    scheduler = run_scheduler(config)
    if config.conditional:
        colors = checkpoint.color_names
        names = class_names(checkpoint, unet.config.num_class_embeds // (len(colors) + 1) - 1)
        return ClassConditionalDDPMPipeline(
            unet=unet, scheduler=scheduler, class_names=",".join(names), color_names=",".join(colors) or None
        )
    if checkpoint.cluster_sizes:
        return UnconditionalDDPMPipeline(
            unet=unet,
            scheduler=scheduler,
            cluster_sizes=list(checkpoint.cluster_sizes),
            self_guidance_scale=config.self_guidance_scale,
        )
    guide_folder = checkpoint.path / GUIDE_FOLDER
    guide = UNet2DModel.from_pretrained(guide_folder).eval() if guide_folder.is_dir() else None
    scale = config.autoguidance_scale if guide is not None else 1.0
    return UnconditionalDDPMPipeline(unet=unet, scheduler=scheduler, guide_unet=guide, autoguidance_scale=scale)


def sample_grid_png(pipeline: DiffusionPipeline, config: TrainingConfig) -> bytes:
    """The sample grid training draws (same count, sampler, steps and seed), as PNG bytes."""
    pipeline.scheduler = make_scheduler(config.sample_scheduler, pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    kwargs = {
        "generator": torch.Generator(device="cpu").manual_seed(config.seed),
        "num_inference_steps": config.ddpm_num_inference_steps,
    }
    count, columns = config.num_sample_images, None
    if config.conditional:
        columns = pipeline.num_classes
        labels = [index % columns for index in range(count)]
        colors = grid_colors(count, columns, pipeline.num_colors)
        images = pipeline(class_labels=labels, color_labels=colors, **kwargs).images
    else:
        images = pipeline(batch_size=count, **kwargs).images
    buffer = io.BytesIO()
    make_grid(images, columns).save(buffer, format="PNG")
    return buffer.getvalue()


def card_summary(checkpoint: Checkpoint, pipeline: DiffusionPipeline, loss_curve: bool) -> TrainingSummary:
    """What the model card reports, from the run record and the checkpoint's state."""
    config, state = checkpoint.config, checkpoint.state
    processes = int(state.get("num_processes", 1))
    guided = getattr(pipeline, "guide_unet", None) is not None
    return TrainingSummary(
        preset=config.preset,
        conditional=config.conditional,
        dataset=config.train_data_dir or config.dataset_name,
        resolution=pipeline.unet.config.sample_size,
        max_train_steps=checkpoint.step,
        total_batch_size=config.train_batch_size * processes * config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        mixed_precision=config.mixed_precision,
        hardware=UNRECORDED_HARDWARE,
        wall_time_s=float(state.get("train_seconds", 0.0)),
        final_loss=state.get("loss_last"),
        num_processes=processes,
        prediction_type=config.prediction_type,
        snr_gamma=config.snr_gamma,
        timestep_sampling=config.timestep_sampling,
        class_names=tuple(pipeline.labels) if config.conditional else (),
        color_names=tuple(pipeline.colors) if config.conditional else (),
        local_dataset=config.train_data_dir is not None,
        autoguidance_scale=config.autoguidance_scale if guided else None,
        self_guidance_clusters=len(checkpoint.cluster_sizes) or None,
        self_guidance_scale=config.self_guidance_scale if checkpoint.cluster_sizes else None,
        use_ema=config.use_ema,
        beta_schedule=config.ddpm_beta_schedule,
        num_train_timesteps=config.ddpm_num_steps,
        preset_network=as_json(checkpoint.state["unet_config"])
        == as_json(with_variance_channels(get_preset(config.preset).unet, config.variance_type)),
        loss_curve=loss_curve,
        variance_type=config.variance_type,
    )


def default_export_dir(checkpoint: Path) -> Path:
    """`<run folder>-checkpoint-N`, beside the run folder."""
    run = checkpoint.resolve().parent
    return run.with_name(f"{run.name}-{checkpoint.name}")


def check_export_dir(output_dir: Path) -> None:
    """Write only into a new or empty folder, or over an earlier export (a pipeline folder that is no run)."""
    if not output_dir.exists():
        return
    if not output_dir.is_dir():
        raise UserInputError(f"--output_dir {output_dir} is a file, not a folder")
    earlier_export = (output_dir / "model_index.json").is_file() and not (output_dir / RUN_RECORD).exists()
    if any(output_dir.iterdir()) and not earlier_export:
        raise UserInputError(
            f"--output_dir {output_dir} is not empty and holds no earlier export; choose a new or empty folder"
        )


def export_checkpoint(checkpoint_dir: Path, output_dir: Path | None = None, device: str = "cpu") -> Path:
    """Write the publishable pipeline folder of the checkpoint at `checkpoint_dir` to `output_dir` (default
    `<run folder>-checkpoint-N`): safetensors weights, pipeline.py, model_index.json, card, sample grid and
    loss curve, as training writes for its final step. Returns the folder."""
    checkpoint = read_checkpoint(Path(checkpoint_dir))
    output_dir = Path(output_dir) if output_dir is not None else default_export_dir(checkpoint.path)
    check_export_dir(output_dir)
    pipeline = rebuild_pipeline(checkpoint).to(device)
    grid = sample_grid_png(pipeline, checkpoint.config)
    pipeline.scheduler = run_scheduler(checkpoint.config)
    loss_png = loss_curve_png(checkpoint.path.parent / LOSS_LOG, last_step=checkpoint.step)
    summary = card_summary(checkpoint, pipeline, loss_curve=loss_png is not None)
    record = {"global_step": checkpoint.step, "exported_from": checkpoint.path.name}
    record["card"] = dataclasses.asdict(summary)
    files = run_files(render_model_card(summary), grid, loss_png, record)
    logger.info("exporting %s to %s", checkpoint.path, output_dir)
    return save_pipeline_folder(pipeline, output_dir, extra_files=files)

"""Pictures of a 2-D point model: the forward process q(x_t | x_0) as a strip of scatter plots, the reverse process
as a strip and a GIF, the denoiser's vector field, and a learned variance against beta_t and beta~_t.

The toy is the one of Sohl-Dickstein et al. (2015, Fig. 1): the swiss roll dissolving into N(0, I) and coming back.
"""

import io

import numpy as np
import torch
from diffusers import DDPMScheduler
from PIL import Image

from ddpm_zoo.objectives import DiffusionTerms
from ddpm_zoo.pipelines import PointDiffusionPipeline
from ddpm_zoo.scatter import EXTENT, line_chart, scatter, strip, vector_field
from ddpm_zoo.visualize import default_forward_timesteps, evenly_spaced


def forward_strip(
    data: np.ndarray, scheduler: DDPMScheduler, timesteps: list[int] | None = None, seed: int = 0
) -> Image.Image:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (Ho et al., 2020, eq. 4) for the data x_0 at each t, one
    panel per t; the same eps throughout, so each point can be followed."""
    timesteps = timesteps or default_forward_timesteps(scheduler.config.num_train_timesteps)
    clean = torch.as_tensor(data, dtype=torch.float32)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed))
    panels = []
    for t in timesteps:
        noisy = scheduler.add_noise(clean, noise, torch.full((len(clean),), t, dtype=torch.long))
        panels.append(scatter(noisy.numpy(), title=f"q(x_t | x_0), t = {t}"))
    return strip(panels)


def reverse_frames(
    pipeline: PointDiffusionPipeline, count: int = 1000, num_inference_steps: int | None = None, seed: int = 0, **call
) -> list[tuple[int, np.ndarray]]:
    """(timestep, points): x_T, then the points after every step of one seeded run of the pipeline (`call`:
    more arguments of the pipeline, e.g. `class_labels` with one label per point)."""
    frames: list[tuple[int, np.ndarray]] = []

    def keep(pipe, i, t, tensors):
        frames.append((int(t), tensors["latents"].float().cpu().numpy()))
        return tensors

    batch = None if call.get("class_labels") is not None else count
    pipeline(
        batch_size=batch,
        generator=torch.Generator().manual_seed(seed),
        num_inference_steps=num_inference_steps,
        callback_on_step_end=keep,
        **call,
    )
    start = initial_noise(pipeline, len(frames[0][1]), seed)
    return [(int(pipeline.scheduler.config.num_train_timesteps), start), *frames]


def initial_noise(pipeline: PointDiffusionPipeline, count: int, seed: int) -> np.ndarray:
    """The x_T a run with this seed starts from: the pipeline's first draw from its generator."""
    noise = torch.randn((count, pipeline.denoiser.config.in_channels), generator=torch.Generator().manual_seed(seed))
    return (noise * pipeline.scheduler.init_noise_sigma).numpy()


def reverse_strip(frames: list[tuple[int, np.ndarray]], labels: np.ndarray | None = None) -> Image.Image:
    """The reverse process, x_T to x_0, at the forward strip's timesteps (the frame nearest each)."""
    targets = default_forward_timesteps(frames[0][0])[::-1][1:]  # x_T stands for the last one
    times = np.array([t for t, _ in frames[1:]])
    chosen = sorted({0, len(frames) - 1} | {1 + int(np.abs(times - target).argmin()) for target in targets})
    return strip([scatter(frames[i][1], labels, title=_frame_title(frames, i)) for i in chosen])


def reverse_gif(frames: list[tuple[int, np.ndarray]], labels: np.ndarray | None = None, max_frames: int = 60) -> bytes:
    """The reverse process as an animated GIF (at most `max_frames` frames, the last one held)."""
    chosen = evenly_spaced(len(frames), min(max_frames, len(frames)))
    images = [scatter(frames[i][1], labels, title=_frame_title(frames, i)) for i in chosen]
    buffer = io.BytesIO()
    durations = [80] * (len(images) - 1) + [1500]
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


def _frame_title(frames: list[tuple[int, np.ndarray]], index: int) -> str:
    return "x_T ~ N(0, I)" if index == 0 else ("x_0" if index == len(frames) - 1 else f"after t = {frames[index][0]}")


@torch.no_grad()
def vector_fields(
    pipeline: PointDiffusionPipeline, timesteps: list[int], grid: int = 21, class_label: int | None = None
) -> Image.Image:
    """The denoiser's field at each t: arrows along E[x_0 | x_t] - x_t implied by its prediction at grid points
    x_t (the direction of the score, grad log p_t = -eps / sqrt(1 - abar_t), scaled by 1 / sqrt(abar_t))."""
    axis = np.linspace(-EXTENT * 0.9, EXTENT * 0.9, grid)
    positions = torch.tensor(np.stack(np.meshgrid(axis, axis), axis=-1).reshape(-1, 2), dtype=torch.float32)
    terms = DiffusionTerms(pipeline.scheduler if isinstance(pipeline.scheduler, DDPMScheduler) else _ddpm(pipeline))
    prediction_type = pipeline.scheduler.config.get("prediction_type", "epsilon")
    labels = None
    if pipeline.num_classes:
        label = pipeline.num_classes if class_label is None else class_label
        labels = torch.full((len(positions),), label, dtype=torch.long)
    panels = []
    for t in timesteps:
        steps = torch.full((len(positions),), t, dtype=torch.long)
        device = pipeline.denoiser.device
        output = (
            pipeline.denoiser(
                positions.to(device), steps.to(device), class_labels=None if labels is None else labels.to(device)
            )
            .sample.float()
            .cpu()
        )
        x_0 = terms.original_sample(output[:, :2], prediction_type, positions, steps)
        panels.append(vector_field(positions.numpy(), (x_0 - positions).numpy(), title=f"E[x_0 | x_t] - x_t, t = {t}"))
    return strip(panels)


def _ddpm(pipeline: PointDiffusionPipeline) -> DDPMScheduler:
    """The training schedule as a DDPMScheduler, whatever scheduler the pipeline holds."""
    return DDPMScheduler.from_config(pipeline.scheduler.config)


@torch.no_grad()
def variance_chart(pipeline: PointDiffusionPipeline, samples: np.ndarray, points: int = 60) -> Image.Image | None:
    """With a learned variance (Improved DDPM eq. 15), sigma_theta^2(t) averaged over x_t ~ q(x_t | x_0) from the
    given samples, against beta_t and beta~_t (Ho et al., 2020, Sec. 3.2's two fixed choices); None otherwise."""
    if pipeline.denoiser.config.out_channels == pipeline.denoiser.config.in_channels:
        return None
    terms = DiffusionTerms(_ddpm(pipeline))
    clean = torch.as_tensor(samples, dtype=torch.float32)
    timesteps = np.unique(np.linspace(1, terms.num_timesteps - 1, points).round().astype(int))
    learned = []
    device = pipeline.denoiser.device
    for t in timesteps:
        steps = torch.full((len(clean),), int(t), dtype=torch.long)
        noisy = _ddpm(pipeline).add_noise(clean, torch.randn_like(clean), steps)
        labels = torch.full_like(steps, pipeline.num_classes) if pipeline.num_classes else None
        output = (
            pipeline.denoiser(
                noisy.to(device), steps.to(device), class_labels=None if labels is None else labels.to(device)
            )
            .sample.float()
            .cpu()
        )
        log_variance = terms.log_variance("learned_range", steps, noisy, output[:, 2:])
        learned.append(float(log_variance.exp().mean()))
    series = {
        "beta_t": terms.betas[timesteps].numpy(),
        "beta~_t": terms.log_variance_min.exp()[timesteps].numpy(),
        "sigma_theta^2(t)": np.array(learned),
    }
    return line_chart(timesteps, series, title="reverse-process variance")

"""Pictures of the diffusion process: sample grids, forward-process strips (and the real images they start
from), reverse-process grids and GIFs; and the training loss curve.

Images travel as tensors in model space ([-1, 1], NCHW) until they become PIL images; small images are
enlarged with nearest-neighbour resampling so that every pixel stays a visible square.
"""

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ddpm_zoo import data
from ddpm_zoo.introspection import has_named_classes
from ddpm_zoo.presets import DIGIT_NAMES

TEXT_COLOR = (235, 235, 235)
TARGET_TILE_PX = 84  # upscale small images to about this size
GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F", "P")
# The forward strip's columns as shares of the schedule: t = 0, 50, 100, 200, 300, 400, 600, 800, 999 for T = 1000.
FORWARD_FRACTIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


def grid_colors(count: int, columns: int, num_colors: int) -> list[int] | None:
    """The color of each image of a class-per-column grid for a model with `num_colors` colors (None without):
    row r in color r, cycling through the colors."""
    return [(i // columns) % num_colors for i in range(count)] if num_colors else None


def make_grid(images: list[Image.Image], columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile equally sized PIL images row by row on a black background."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new(images[0].mode, (columns * (width + padding) + padding, rows * (height + padding) + padding))
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image, (padding + column * (width + padding), padding + row * (height + padding)))
    return grid


# ---- tensors to pictures ----


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Model-space images (N, C, H, W) in [-1, 1] -> PIL images (mode L for 1 channel, RGB for 3)."""
    pixels = ((images.detach().float().cpu() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arrays = pixels.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[..., 0], mode="L") if a.shape[-1] == 1 else Image.fromarray(a) for a in arrays]


def auto_scale(size: int, target: int = TARGET_TILE_PX) -> int:
    """The integer enlargement that brings a `size`-pixel image to about `target` pixels (at least 1)."""
    return max(1, round(target / size))


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Enlarge by an integer factor with nearest-neighbour resampling (pixels stay sharp squares)."""
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def load_font(size: int = 12) -> ImageFont.ImageFont:
    """Pillow's built-in font, at `size` pixels where FreeType is available."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _text_size(font: ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = ImageDraw.Draw(Image.new("RGB", (1, 1))).multiline_textbbox(
        (0, 0), text, font=font, spacing=2
    )
    return right - left, bottom - top


def annotated_table(
    tiles: Sequence[Sequence[Image.Image]],
    row_labels: Sequence[str] | None = None,
    column_labels: Sequence[str] | None = None,
    title: str | None = None,
    padding: int = 4,
    font_size: int = 12,
) -> Image.Image:
    """Lay out equally sized images in rows and columns, with labels left of rows and above columns."""
    font = load_font(font_size)
    width, height = tiles[0][0].size
    columns = max(len(row) for row in tiles)
    label_width = max((_text_size(font, text)[0] for text in row_labels or []), default=0)
    label_width += padding if label_width else 0
    header_height = max((_text_size(font, text)[1] for text in column_labels or []), default=0)
    header_height += padding if header_height else 0
    title_height = _text_size(font, title)[1] + padding if title else 0
    table = Image.new(
        "RGB",
        (
            label_width + columns * (width + padding) + padding,
            title_height + header_height + len(tiles) * (height + padding) + padding,
        ),
    )
    draw = ImageDraw.Draw(table)
    top = title_height + header_height + padding
    if title:
        draw.multiline_text((padding, padding // 2), title, fill=TEXT_COLOR, font=font, spacing=2)
    for column, text in enumerate(column_labels or []):
        text_width = _text_size(font, text)[0]
        left = label_width + padding + column * (width + padding) + (width - text_width) // 2
        draw.multiline_text((max(left, 0), title_height + padding // 2), text, fill=TEXT_COLOR, font=font, spacing=2)
    for row, images in enumerate(tiles):
        y = top + row * (height + padding)
        if row_labels:
            text_height = _text_size(font, row_labels[row])[1]
            draw.multiline_text(
                (padding // 2, y + (height - text_height) // 2), row_labels[row], fill=TEXT_COLOR, font=font
            )
        for column, image in enumerate(images):
            table.paste(image.convert("RGB"), (label_width + padding + column * (width + padding), y))
    return table


def sample_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    columns: int | None = None,
    scale: int | None = None,
) -> Image.Image:
    """(d) A grid of samples, each with its label (e.g. the class name) printed under it."""
    scale = scale or auto_scale(images[0].width)
    columns = columns or math.ceil(math.sqrt(len(images)))
    font = load_font(12)
    tiles = [upscale(image, scale).convert("RGB") for image in images]
    if labels:
        caption_height = max(_text_size(font, text)[1] for text in labels) + 6
        captioned = []
        for tile, text in zip(tiles, labels, strict=True):
            canvas = Image.new("RGB", (tile.width, tile.height + caption_height))
            canvas.paste(tile, (0, 0))
            text_width = _text_size(font, text)[0]
            ImageDraw.Draw(canvas).text(
                ((tile.width - text_width) // 2, tile.height + 2), text, fill=TEXT_COLOR, font=font
            )
            captioned.append(canvas)
        tiles = captioned
    return make_grid(tiles, columns=columns, padding=4)


# ---- (a) the forward process ----


def forward_process(
    x0: torch.Tensor,
    timesteps: Sequence[int],
    scheduler,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps for each t, a sample of q(x_t | x_0) (DDPM eq. 4).

    One noise draw eps ~ N(0, I) is shared by all t, so a strip shows the same image fading into the same
    noise. Returns (len(timesteps), *x0.shape); t = 0 is the first noising step, as in diffusers.
    """
    alphas_cumprod = scheduler.alphas_cumprod.to(dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
    frames = []
    for t in timesteps:
        abar = alphas_cumprod[int(t)].to(x0.device)
        frames.append(abar.sqrt() * x0.double() + (1 - abar).sqrt() * eps)
    return torch.stack(frames).to(x0.dtype)


def noise_level(scheduler, t: int) -> float:
    """The noise's standard deviation sqrt(1 - abar_t) in x_t (DDPM eq. 4)."""
    return float((1 - scheduler.alphas_cumprod[int(t)]).sqrt())


def forward_strip(
    images: torch.Tensor,
    timesteps: Sequence[int],
    scheduler,
    generator: torch.Generator | None = None,
    scale: int | None = None,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """(a) One row per real image (model space, NCHW), one column per t of the closed-form q(x_t | x_0),
    each column headed by t and the noise level ("noise sd"): sqrt(1 - abar_t)."""
    frames = forward_process(images, timesteps, scheduler, generator)
    scale = scale or auto_scale(images.shape[-1])
    per_t = [[upscale(image, scale) for image in to_pil(frame)] for frame in frames]
    rows = [list(row) for row in zip(*per_t, strict=True)]
    headers = [f"t={int(t)}\nnoise sd {noise_level(scheduler, t):.2f}" for t in timesteps]
    return annotated_table(rows, row_labels=row_labels, column_labels=headers)


def default_forward_timesteps(num_train_timesteps: int) -> list[int]:
    """The forward strip's default columns for a schedule of T steps: FORWARD_FRACTIONS of T, the last T - 1."""
    return sorted({min(round(share * num_train_timesteps), num_train_timesteps - 1) for share in FORWARD_FRACTIONS})


def forward_images(
    dataset_name: str | None,
    train_data_dir: str | None,
    image_column: str | None,
    num_images: int,
    resolution: int,
    channels: int,
    seed: int = 0,
) -> tuple[torch.Tensor, list[str] | None]:
    """`num_images` real images in model space ([-1, 1], NCHW) and their class names: one per class
    where the data has labels. Grayscale data is tinted like colored-mnist for a 3-channel model."""
    if train_data_dir is None and (dataset_name or data.EMBEDDED_MNIST) == data.EMBEDDED_MNIST:
        arrays, digit_labels = data.load_mnist_5k_arrays()
        indices = first_of_each_class(digit_labels.tolist(), num_images)
        pixels = [
            data.image_to_array(Image.fromarray(arrays[i], mode="L"), resolution, 1, False, f"digit #{i}")
            for i in indices
        ]
        decoded = data.DecodedImages(torch.from_numpy(np.stack(pixels)), None)
        labels, class_names, grayscale = [int(digit_labels[i]) for i in indices], DIGIT_NAMES, True
    else:
        source = data.load_image_source(dataset_name, train_data_dir, image_column=image_column)
        column = source.dataset[source.label_column] if source.label_column else None
        count = min(num_images, len(source.dataset))
        indices = first_of_each_class(column, count) if column else list(range(count))
        subset = data.ImageSource(
            source.dataset.select(indices),
            source.image_column,
            source.label_column,
            source.class_names,
        )
        grayscale = subset.dataset[0][subset.image_column].mode in GRAYSCALE_MODES
        decoded = data.decode_dataset(subset, resolution, 1 if grayscale else channels, convert_channels=True)
        labels = [int(column[i]) for i in indices] if column else None
        class_names = source.class_names
    if channels == 3 and grayscale:
        decoded = data.apply_colorizer(decoded, seed)
    images = decoded.images.float() / 127.5 - 1
    if labels is None:
        return images, None
    return images, [class_names[k] if k < len(class_names) else str(k) for k in labels]


def first_of_each_class(labels: Sequence[int], count: int) -> list[int]:
    """Indices of the first example of each class in class order, then further examples, `count` in all."""
    first: dict[int, int] = {}
    for index, label in enumerate(labels):
        first.setdefault(int(label), index)
    chosen = [first[label] for label in sorted(first)][:count]
    taken = set(chosen)
    chosen += [i for i in range(len(labels)) if i not in taken][: max(0, count - len(chosen))]
    return chosen


# ---- (b, c) the reverse process ----


def evenly_spaced(num_steps: int, count: int) -> list[int]:
    """`count` step indices from the first (0) to the last (num_steps - 1), evenly spaced, no repeats."""
    count = max(1, min(count, num_steps))
    if count == 1:
        return [num_steps - 1]
    return sorted({int(i * (num_steps - 1) / (count - 1) + 0.5) for i in range(count)})


def model_space(scheduler, latents: torch.Tensor) -> torch.Tensor:
    """Latents as x_t of DDPM eq. 4: sigma-parameterised schedulers (Euler...) keep x_t / sqrt(abar_t)
    = x_0 + sigma_t eps, so divide by sqrt(sigma^2 + 1) at the scheduler's current (next) sigma."""
    if float(getattr(scheduler, "init_noise_sigma", 1.0)) == 1.0:
        return latents
    index = scheduler.step_index
    sigma = scheduler.sigmas[min(index, len(scheduler.sigmas) - 1)].to(latents.device)
    return latents / (sigma**2 + 1).sqrt()


def reverse_process_frames(
    pipeline,
    num_frames: int,
    num_inference_steps: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    **call_kwargs,
) -> tuple[list[int], list[int], torch.Tensor]:
    """Run the pipeline and keep x_t (not the predicted x_0) after evenly spaced denoising steps.

    Returns (step numbers 1..S, timesteps t the kept x_t belong to, frames (F, N, C, H, W) in model
    space); the last frame is the final sample x_0. `call_kwargs` go to the pipeline
    (`class_labels`, `guidance_scale` or `batch_size`).
    """
    keep = set(evenly_spaced(num_inference_steps, num_frames))
    steps, timesteps, frames = [], [], []

    def capture(pipe, i, t, callback_kwargs):
        if i in keep:
            latents = callback_kwargs["latents"]
            frames.append(model_space(pipe.scheduler, latents).detach().float().cpu())
            steps.append(i + 1)
            following = pipe.scheduler.timesteps
            timesteps.append(int(following[i + 1]) if i + 1 < len(following) else 0)
        return callback_kwargs

    pipeline(
        num_inference_steps=num_inference_steps,
        generator=generator,
        output_type="pt",
        callback_on_step_end=capture,
        **call_kwargs,
    )
    return steps, timesteps, torch.stack(frames)


def _call_kwargs(pipeline, class_labels: Sequence[int | str] | None, num_rows: int, guidance_scale: float | None):
    """Pipeline arguments and row labels: one row per class (conditional) or per sample; a `guidance_scale`
    of None keeps the pipeline's default (classifier-free guidance, autoguidance or self-guidance)."""
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    if has_named_classes(pipeline):
        labels = list(class_labels) if class_labels else list(range(pipeline.num_classes))
        indices = [pipeline.class_index(label) for label in labels]
        names = pipeline.labels
        row_labels = [names[i] if i < len(names) else str(i) for i in indices]
        return {"class_labels": indices, **guidance}, row_labels
    return {"batch_size": num_rows, **guidance}, [str(i) for i in range(num_rows)]


def reverse_grid(
    pipeline,
    num_columns: int = 10,
    num_inference_steps: int = 1000,
    class_labels: Sequence[int | str] | None = None,
    num_rows: int = 10,
    guidance_scale: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    scale: int | None = None,
) -> Image.Image:
    """(b) One row per class (all classes by default; `num_rows` samples for an unconditional model),
    columns showing x_t after evenly spaced denoising steps, the last column the final sample."""
    kwargs, row_labels = _call_kwargs(pipeline, class_labels, num_rows, guidance_scale)
    steps, timesteps, frames = reverse_process_frames(pipeline, num_columns, num_inference_steps, generator, **kwargs)
    scale = scale or auto_scale(frames.shape[-1], target=56)
    per_step = [[upscale(image, scale) for image in to_pil(frame)] for frame in frames]
    rows = [list(row) for row in zip(*per_step, strict=True)]
    headers = [f"t={t}" for t in timesteps]
    title = f"reverse process: x_t after each of {len(steps)} of {num_inference_steps} steps"
    return annotated_table(rows, row_labels=row_labels, column_labels=headers, title=title)


def reverse_animation(
    pipeline,
    path: str | Path,
    num_frames: int = 50,
    fps: float = 10.0,
    num_inference_steps: int = 1000,
    class_labels: Sequence[int | str] | None = None,
    num_images: int = 10,
    guidance_scale: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    scale: int | None = None,
    hold_last_s: float = 1.5,
) -> Path:
    """(c) A looping GIF of x_t during the reverse process: `num_frames` evenly spaced steps at `fps`
    frames per second, the final samples held for `hold_last_s` seconds. Returns the file's path."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    kwargs, labels = _call_kwargs(pipeline, class_labels, num_images, guidance_scale)
    steps, timesteps, frames = reverse_process_frames(pipeline, num_frames, num_inference_steps, generator, **kwargs)
    scale = scale or auto_scale(frames.shape[-1], target=56)
    columns = min(len(labels), 10)
    pictures = []
    for step, t, frame in zip(steps, timesteps, frames, strict=True):
        grid = sample_grid(to_pil(frame), labels if has_named_classes(pipeline) else None, columns, scale)
        pictures.append(annotated_table([[grid]], title=f"step {step}/{num_inference_steps}   t={t}"))
    frame_ms = round(1000 / fps)
    durations = [frame_ms] * (len(pictures) - 1) + [max(frame_ms, round(hold_last_s * 1000))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=durations, loop=0, optimize=False)
    return path


# ---- the loss curve ----

CURVE_SIZE = (640, 360)
CURVE_MARGIN = (64, 24, 16, 40)  # left, top, right, bottom: room for the tick labels and the title
CURVE_BACKGROUND, CURVE_AXES = (255, 255, 255), (90, 90, 90)
CURVE_RAW, CURVE_SMOOTH = (170, 190, 230), (20, 70, 170)
SMOOTHING_WINDOW = 0.05  # the smoothed line averages this share of the logged steps


def read_loss_log(path: Path, last_step: int | None = None) -> tuple[list[int], list[float]]:
    """Steps and losses of a `loss.csv` (step, loss, ...) up to `last_step`; rows without a finite positive
    loss are left out."""
    steps, losses = [], []
    if not path.is_file():
        return steps, losses
    with path.open(newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            try:
                step, loss = int(row["step"]), float(row["loss"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(loss) and loss > 0 and (last_step is None or step <= last_step):
                steps.append(step)
                losses.append(loss)
    return steps, losses


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and its neighbours, `window // 2` on each side (fewer at the ends)."""
    sums, half = np.cumsum([0.0, *values]), window // 2
    spans = [(max(0, i - half), min(len(values), i + half + 1)) for i in range(len(values))]
    return [float(sums[stop] - sums[start]) / (stop - start) for start, stop in spans]


def loss_curve(steps: Sequence[int], losses: Sequence[float], title: str = "training loss") -> Image.Image:
    """The loss against the step on a log scale, raw and smoothed, with the step and loss ranges labelled."""
    width, height = CURVE_SIZE
    left, top, right, bottom = CURVE_MARGIN
    image = Image.new("RGB", CURVE_SIZE, CURVE_BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = load_font(12)
    low, high = math.log10(min(losses)), math.log10(max(losses))
    span_y, span_x = (high - low) or 1.0, (steps[-1] - steps[0]) or 1

    def point(step: int, loss: float) -> tuple[float, float]:
        x = left + (step - steps[0]) / span_x * (width - left - right)
        return x, top + (high - math.log10(loss)) / span_y * (height - top - bottom)

    window = max(1, round(len(losses) * SMOOTHING_WINDOW))
    draw.line([point(s, v) for s, v in zip(steps, losses, strict=True)], fill=CURVE_RAW, width=1)
    smooth = moving_average(losses, window)
    draw.line([point(s, v) for s, v in zip(steps, smooth, strict=True)], fill=CURVE_SMOOTH, width=2)
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=CURVE_AXES)
    draw.text((left - 4, top), f"{max(losses):.3g}", fill=CURVE_AXES, font=font, anchor="ra")
    draw.text((left - 4, height - bottom), f"{min(losses):.3g}", fill=CURVE_AXES, font=font, anchor="rd")
    draw.text((left, height - bottom + 4), f"step {steps[0]:,}", fill=CURVE_AXES, font=font, anchor="la")
    draw.text((width - right, height - bottom + 4), f"{steps[-1]:,}", fill=CURVE_AXES, font=font, anchor="ra")
    draw.text((width // 2, 4), f"{title} (log scale)", fill=CURVE_AXES, font=font, anchor="ma")
    return image


def loss_curve_png(loss_log: Path, last_step: int | None = None) -> bytes | None:
    """The loss curve of a run's `loss.csv` (up to `last_step`) as PNG bytes, or None when it holds fewer than
    two logged steps."""
    steps, losses = read_loss_log(loss_log, last_step)
    if len(steps) < 2:
        return None
    buffer = io.BytesIO()
    loss_curve(steps, losses).save(buffer, format="PNG")
    return buffer.getvalue()

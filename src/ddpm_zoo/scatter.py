"""Pictures of 2-D points with PIL alone: scatter plots, strips of them, vector fields and line charts.

Every panel maps the same square of the plane (`EXTENT`, wide enough for the toy sets and for N(0, I)) to
pixels, so panels side by side compare directly.
"""

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ddpm_zoo.visualize import load_font

EXTENT = 3.5  # panels show [-EXTENT, EXTENT]^2
PANEL_PX = 256
BACKGROUND = (255, 255, 255)
AXES = (215, 215, 215)
INK = (30, 30, 30)
POINT = (31, 119, 180)
# Matplotlib's tab10 colors, for labelled points.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def to_pixels(points: np.ndarray, size: int, extent: float = EXTENT) -> np.ndarray:
    """Plane coordinates (N, 2) -> pixel coordinates (N, 2), y pointing up."""
    scale = size / (2 * extent)
    return np.stack([(points[:, 0] + extent) * scale, (extent - points[:, 1]) * scale], axis=1)


def blank_panel(title: str = "", size: int = PANEL_PX) -> Image.Image:
    """A white panel with the two axes through the origin and `title` at the top left."""
    panel = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(panel)
    draw.line([(size / 2, 0), (size / 2, size)], fill=AXES)
    draw.line([(0, size / 2), (size, size / 2)], fill=AXES)
    if title:
        draw.text((4, 2), title, fill=INK, font=load_font(12))
    return panel


def scatter(
    points: np.ndarray, labels: np.ndarray | None = None, title: str = "", size: int = PANEL_PX, radius: float = 1.2
) -> Image.Image:
    """One scatter plot of points (N, 2); labelled points take the palette color of their label."""
    panel = blank_panel(title, size)
    draw = ImageDraw.Draw(panel)
    pixels = to_pixels(np.asarray(points, dtype=np.float64), size)
    colors = [POINT] * len(pixels) if labels is None else [PALETTE[int(i) % len(PALETTE)] for i in labels]
    for (x, y), color in zip(pixels, colors, strict=True):
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
    return panel


def strip(panels: Sequence[Image.Image], padding: int = 4) -> Image.Image:
    """Panels side by side on a white background."""
    width = sum(panel.width for panel in panels) + padding * (len(panels) + 1)
    height = max(panel.height for panel in panels) + 2 * padding
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    x = padding
    for panel in panels:
        canvas.paste(panel, (x, padding))
        x += panel.width + padding
    return canvas


def vector_field(
    positions: np.ndarray, vectors: np.ndarray, title: str = "", size: int = PANEL_PX, length_px: float = 10.0
) -> Image.Image:
    """Arrows from each position (N, 2) along its vector (N, 2), the longest drawn `length_px` pixels long."""
    panel = blank_panel(title, size)
    draw = ImageDraw.Draw(panel)
    starts = to_pixels(np.asarray(positions, dtype=np.float64), size)
    vectors = np.asarray(vectors, dtype=np.float64) * np.array([1.0, -1.0])
    longest = max(float(np.linalg.norm(vectors, axis=1).max()), 1e-12)
    ends = starts + vectors * (length_px / longest)
    for (x0, y0), (x1, y1) in zip(starts, ends, strict=True):
        draw.line([(x0, y0), (x1, y1)], fill=POINT, width=1)
        draw.ellipse([x1 - 1.2, y1 - 1.2, x1 + 1.2, y1 + 1.2], fill=INK)
    return panel


def line_chart(
    x: np.ndarray, series: dict[str, np.ndarray], title: str = "", size: tuple[int, int] = (480, 300), log: bool = True
) -> Image.Image:
    """Lines y(x), one per named series (log scale by default), with a legend in the series' colors."""
    width, height = size
    margin = 40
    chart = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(chart)
    font = load_font(11)
    values = {name: np.log10(np.maximum(y, 1e-12)) if log else np.asarray(y, float) for name, y in series.items()}
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    span = max(high - low, 1e-12)
    x = np.asarray(x, dtype=np.float64)
    px = margin + (x - x.min()) / max(float(x.max() - x.min()), 1e-12) * (width - 2 * margin)
    draw.rectangle([margin, margin, width - margin, height - margin], outline=AXES)
    for index, (name, y) in enumerate(values.items()):
        py = height - margin - (y - low) / span * (height - 2 * margin)
        color = PALETTE[index % len(PALETTE)]
        draw.line(list(zip(px.tolist(), py.tolist(), strict=True)), fill=color, width=2)
        draw.text((margin + 6, margin + 4 + 14 * index), name, fill=color, font=font)
    scale = "log10 " if log else ""
    draw.text((4, 4), title, fill=INK, font=load_font(12))
    draw.text(
        (margin, height - margin + 6),
        f"t: {x.min():g} .. {x.max():g};  {scale}y: {low:.2f} .. {high:.2f}",
        fill=INK,
        font=font,
    )
    return chart

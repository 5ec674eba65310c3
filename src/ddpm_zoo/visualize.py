"""Pictures of the diffusion process: sample grids, forward-process strips, reverse-process grids and GIFs."""

import math

from PIL import Image


def make_grid(images: list[Image.Image], columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile equally sized PIL images row by row on a black background."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new(
        images[0].mode, (columns * (width + padding) + padding, rows * (height + padding) + padding)
    )
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image, (padding + column * (width + padding), padding + row * (height + padding)))
    return grid

"""The miniature's data: one filled shape on a plain background, at any size, from a seed.

Every image holds exactly one object whose bounding box spans 40-60 % of the image's shorter
side, placed at random fully inside the image, so at every size and aspect ratio the right
answer to its caption is one object of the named colour. Images are pure functions of
``(seed, index, width, height)``: the same arguments give the same pixels on every machine.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}
SPAN = (0.4, 0.6)  # bounding-box side as a fraction of the image's shorter side


@dataclass(frozen=True)
class ShapeSpec:
    """What one image shows: the caption's three words and where the shape's bounding box lies."""

    shape: str
    colour: str
    background: str
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive), pixels

    @property
    def caption(self) -> str:
        return caption(self.colour, self.shape, self.background)


def caption(colour: str, shape: str, background: str) -> str:
    """The grammar's only sentence form."""
    return f"a {colour} {shape} on a {background} background"


def vocabulary() -> list[tuple[str, str, str]]:
    """Every (colour, shape, background) the grammar allows, in a fixed order (36 prompts)."""
    return list(itertools.product(COLOURS, SHAPES, BACKGROUNDS))


def parse_caption(text: str) -> tuple[str, str, str]:
    """(colour, shape, background) of a caption of the grammar; ValueError for any other text."""
    words = text.split()
    if (len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background"
            or words[1] not in COLOURS or words[2] not in SHAPES or words[5] not in BACKGROUNDS):
        raise ValueError(f"{text!r} is not of the form 'a <colour> <shape> on a <background> background' "
                         f"(colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; backgrounds {', '.join(BACKGROUNDS)})")
    return words[1], words[2], words[5]


def _rng(seed: int, index: int, width: int, height: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, width, height])


def draw_spec(seed: int, index: int, width: int, height: int) -> ShapeSpec:
    """The random content of image ``index`` at this size: words uniform over the vocabulary, box placed at random."""
    if width < 8 or height < 8:
        raise ValueError(f"{width}x{height} is too small for a shape; use sides of at least 8 px")
    rng = _rng(seed, index, width, height)
    colour, shape, background = vocabulary()[int(rng.integers(len(vocabulary())))]
    shorter = min(width, height)
    low, high = math.ceil(SPAN[0] * shorter), math.floor(SPAN[1] * shorter)
    side = int(rng.integers(low, high + 1))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    return ShapeSpec(shape, colour, background, (left, top, left + side, top + side))


def render(spec: ShapeSpec, width: int, height: int) -> Image.Image:
    """The RGB image of ``spec``: flat colours, no anti-aliasing (so the colour set is exact)."""
    image = Image.new("RGB", (width, height), BACKGROUNDS[spec.background])
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = spec.box
    fill = COLOURS[spec.colour]
    # PIL's boxes include their last pixel; ours exclude it.
    if spec.shape == "square":
        draw.rectangle((left, top, right - 1, bottom - 1), fill=fill)
    elif spec.shape == "circle":
        draw.ellipse((left, top, right - 1, bottom - 1), fill=fill)
    else:  # an upright triangle filling its box's width and height
        draw.polygon([((left + right - 1) / 2, top), (left, bottom - 1), (right - 1, bottom - 1)], fill=fill)
    return image


def sample(seed: int, index: int, width: int, height: int) -> tuple[Image.Image, ShapeSpec]:
    """Image ``index`` of the data set with this seed, at ``width`` x ``height``."""
    spec = draw_spec(seed, index, width, height)
    return render(spec, width, height), spec

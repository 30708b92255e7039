"""Scoring generated images of the miniature's grammar: how many objects, and of which colour.

An object is a connected region (8-neighbourhood) of pixels that differ from the prompted
background colour by more than ``FOREGROUND_DISTANCE`` in some channel; regions smaller than
``MIN_OBJECT_FRACTION`` of the image are specks and ignored. An object's colour is the palette
colour nearest (Euclidean, RGB) to its pixels' median. An image succeeds when it holds exactly
one object and that object has the prompted colour.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .shapes import BACKGROUNDS, COLOURS, parse_caption

FOREGROUND_DISTANCE = 96  # of 255, per channel
MIN_OBJECT_FRACTION = 0.01
PALETTE = {**COLOURS, **BACKGROUNDS}


@dataclass(frozen=True)
class DetectedObject:
    area: int  # pixels
    colour: str  # nearest palette colour name
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


@dataclass(frozen=True)
class Verdict:
    """The scorer's reading of one image against its prompt."""

    prompt_colour: str
    objects: list[DetectedObject] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.objects)

    @property
    def colour_ok(self) -> bool:
        """Every object found has the prompted colour (and there is at least one)."""
        return bool(self.objects) and all(o.colour == self.prompt_colour for o in self.objects)

    @property
    def success(self) -> bool:
        return self.count == 1 and self.colour_ok

    def describe(self) -> str:
        """One short label, e.g. ``ok: 1 red`` or ``FAIL: 2 (red, red)``."""
        colours = ", ".join(o.colour for o in self.objects) or "none"
        return f"{'ok' if self.success else 'FAIL'}: {self.count} ({colours})"

    def to_json(self) -> dict:
        return {"success": self.success, "count": self.count, "colour_ok": self.colour_ok,
                "colours": [o.colour for o in self.objects], "areas": [o.area for o in self.objects]}


def label_regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (8-neighbourhood) of a boolean mask: (labels 1..n, 0 outside; n).

    Union-find over the runs of each row, so the cost grows with the number of runs, not pixels.
    """
    height, _ = mask.shape
    parent: list[int] = [0]
    rows: list[list[tuple[int, int, int]]] = []  # per row: (start, end exclusive, run id)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(height):
        padded = np.concatenate(([False], mask[y], [False])).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        runs = []
        for start, end in zip(edges[0::2].tolist(), edges[1::2].tolist()):
            run_id = len(parent)
            parent.append(run_id)
            for p_start, p_end, p_id in rows[-1] if rows else ():
                if p_start <= end and start <= p_end:  # touching, diagonals included
                    a, b = find(run_id), find(p_id)
                    if a != b:
                        parent[max(a, b)] = min(a, b)
            runs.append((start, end, run_id))
        rows.append(runs)
    labels = np.zeros(mask.shape, dtype=np.int32)
    roots: dict[int, int] = {}
    for y, runs in enumerate(rows):
        for start, end, run_id in runs:
            root = find(run_id)
            labels[y, start:end] = roots.setdefault(root, len(roots) + 1)
    return labels, len(roots)


def _nearest_colour(rgb: np.ndarray) -> str:
    names = list(PALETTE)
    distances = [float(np.sum((rgb - np.array(PALETTE[n], dtype=np.float64)) ** 2)) for n in names]
    return names[int(np.argmin(distances))]


def score(image: Image.Image | np.ndarray, prompt: str) -> Verdict:
    """Read ``image`` (RGB) against ``prompt`` (a caption of the grammar)."""
    colour, _, background = parse_caption(prompt)
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3); got {pixels.dtype} {pixels.shape}")
    distance = np.abs(pixels.astype(np.int16) - np.array(BACKGROUNDS[background], dtype=np.int16)).max(axis=2)
    labels, count = label_regions(distance > FOREGROUND_DISTANCE)
    min_area = MIN_OBJECT_FRACTION * pixels.shape[0] * pixels.shape[1]
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    objects = []
    for index in range(1, count + 1):
        if areas[index] < min_area:
            continue
        ys, xs = np.nonzero(labels == index)
        median = np.median(pixels[ys, xs].astype(np.float64), axis=0)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        objects.append(DetectedObject(int(areas[index]), _nearest_colour(median), box))
    objects.sort(key=lambda o: -o.area)
    return Verdict(colour, objects)

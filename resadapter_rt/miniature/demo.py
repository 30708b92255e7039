"""``resadapter-rt demo``: the built-in ``mini-sd15`` with and without its ResAdapter, side by side.

Two exports under one root: ``model/`` (``--resadapter none``: the model as it is) and
``resadapter/`` (its ResAdapter, dynamic alpha). The same prompt and seed are generated at the
training size and out of domain with both, scored, and laid out in one labelled grid PNG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from ..errors import ResAdapterRTError
from ..models.mini import MINI_NAME
from .scorer import Verdict, score
from .shapes import parse_caption

# (width, height, what it is relative to the 128x128 training size)
DEMO_SIZES = ((128, 128, "training size"), (64, 64, "1/2x"), (256, 256, "2x"), (384, 384, "3x"),
              (384, 128, "wide 3:1"), (128, 384, "tall 1:3"))
VALIDATION_SIZES = ((200, 136, 2), (128, 384, 1))  # off-trace sizes the demo exports are checked at
EXPORTS = {"model": "none", "resadapter": MINI_NAME}  # subdirectory -> --resadapter
ROW_LABELS = {"model": "without ResAdapter (the model as it is)", "resadapter": "with ResAdapter"}


@dataclass
class DemoCell:
    width: int
    height: int
    label: str
    variant: str  # "model" | "resadapter"
    image: Image.Image
    alpha: float | None
    verdict: Verdict | None  # None when the prompt is not of the grammar

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "label": self.label, "variant": self.variant,
                "alpha": self.alpha, "verdict": self.verdict.to_json() if self.verdict else None}


def ensure_exports(root: Path, notify: Callable[[str], None], progress: Callable[[str], None]) -> dict[str, Path]:
    """The two exports under ``root``, exported where missing.

    ``root`` must be new, empty or made by resadapter-rt: demo never writes into a directory it did not create.
    """
    from ..export.exporter import ExportOptions, export_pipeline, read_manifest
    from ..files import ARTIFACT_MARKER, created_by_us

    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not created_by_us(root):
        raise ResAdapterRTError(f"{root}: not an export and not created by resadapter-rt, so demo leaves it alone; "
                                "pass --artifacts with a new directory (or one demo made)")
    root.mkdir(parents=True, exist_ok=True)
    (root / ARTIFACT_MARKER).write_text('{"created_by": "resadapter-rt demo"}\n')
    directories = {}
    for name, adapter in EXPORTS.items():
        directory = directories[name] = root / name
        try:
            read_manifest(directory)
            notify(f"using the existing export {directory}")
            continue
        except ResAdapterRTError:
            pass
        alpha = 1.0 if adapter == "none" else "dynamic"
        notify(f"exporting {MINI_NAME} with --resadapter {adapter} to {directory} ...")
        export_pipeline(ExportOptions(model=MINI_NAME, resadapter=adapter, alpha=alpha, validation_sizes=VALIDATION_SIZES),
                        directory, force=True, progress=progress)
    return directories


def generate_cells(pipes: dict, prompt: str, seed: int, steps: int, guidance: float, alpha: str = "auto",
                   sizes=DEMO_SIZES, scheduler: str = "model") -> list[DemoCell]:
    """Every size with every export: the same prompt and seed, scored when the prompt is of the grammar."""
    try:
        parse_caption(prompt)
        scorable = True
    except ValueError:
        scorable = False
    cells = []
    for width, height, label in sizes:
        for variant, pipe in pipes.items():
            result = pipe(prompt, height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
                          seed=seed, resadapter_alpha=alpha if pipe.manifest["alpha_mode"] == "dynamic" else "auto",
                          scheduler=scheduler)
            image = result.images[0]
            used = result.alpha if pipe.manifest["alpha_mode"] == "dynamic" else None
            cells.append(DemoCell(width, height, label, variant, image, used, score(image, prompt) if scorable else None))
    return cells


def grid_image(cells: list[DemoCell], prompt: str, seed: int) -> Image.Image:
    """Rows: without / with the adapter; columns: sizes. Each cell labelled with its size and verdict."""
    columns = list(dict.fromkeys((c.width, c.height, c.label) for c in cells))
    rows = list(dict.fromkeys(c.variant for c in cells))
    cell_w = max(c.width for c in cells)
    cell_h = max(c.height for c in cells)
    pad, caption_h, title_h, row_label_h = 8, 30, 22, 16
    width = len(columns) * (cell_w + pad) + pad
    height = title_h + len(rows) * (row_label_h + cell_h + caption_h + pad) + pad
    grid = Image.new("RGB", (width, height), (128, 128, 128))
    draw = ImageDraw.Draw(grid)
    draw.text((pad, 4), f"{MINI_NAME}: \"{prompt}\", seed {seed} (trained at 128x128 only)", fill=(255, 255, 255))
    by_key = {(c.width, c.height, c.label, c.variant): c for c in cells}
    y = title_h
    for variant in rows:
        draw.text((pad, y), ROW_LABELS.get(variant, variant), fill=(255, 255, 255))
        y += row_label_h
        for index, column in enumerate(columns):
            cell = by_key[(*column, variant)]
            x = pad + index * (cell_w + pad)
            grid.paste(cell.image, (x, y))
            alpha = f", alpha {cell.alpha:g}" if cell.alpha is not None else ""
            verdict = cell.verdict.describe() if cell.verdict else "(prompt not scorable)"
            draw.text((x, y + cell.height + 2), f"{cell.width}x{cell.height} {cell.label}{alpha}", fill=(255, 255, 255))
            colour = (160, 255, 160) if cell.verdict and cell.verdict.success else (255, 170, 170)
            draw.text((x, y + cell.height + 15), verdict, fill=colour)
        y += cell_h + caption_h + pad
    return grid


def write_report(cells: list[DemoCell], path: Path, prompt: str, seed: int, steps: int, guidance: float) -> None:
    """The cells' sizes, alphas and verdicts as JSON beside the grid."""
    record = {"model": MINI_NAME, "prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
              "cells": [c.to_json() for c in cells]}
    path.write_text(json.dumps(record, indent=1) + "\n")

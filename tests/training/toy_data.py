"""A small captioned dataset with learnable structure: coloured shapes on gradients at mixed sizes."""

from __future__ import annotations

import json
from pathlib import Path

SIZES = [(64, 64), (128, 64), (64, 128), (128, 128), (192, 64), (64, 192)]  # train with --min-side 64
COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 180, 60), "yellow": (230, 210, 40)}


def make_dataset(directory: Path, count: int = 12, captions: str = "metadata") -> Path:
    """``count`` PNGs cycling through SIZES; ``captions``: "metadata" (metadata.jsonl), "txt" (beside each image) or "none"."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    lines = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        colour = names[index % len(names)]
        shape = "circle" if index % 2 else "square"
        image = Image.new("RGB", (width, height))
        draw = ImageDraw.Draw(image)
        for y in range(height):  # a vertical grey gradient
            draw.line([(0, y), (width, y)], fill=(64 + y * 128 // height,) * 3)
        box = (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
        name = f"img{index:02d}.png"
        image.save(directory / name)
        text = f"a {colour} {shape}"
        if captions == "metadata":
            lines.append(json.dumps({"file_name": name, "text": text}))
        elif captions == "txt":
            (directory / name).with_suffix(".txt").write_text(text)
    if lines:
        (directory / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return directory

"""What a training run leaves besides the adapter: ``train_log.jsonl``, the loss curve, validation images."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

LOG_FILE = "train_log.jsonl"
CURVE_FILE = "loss_curve.png"
VALIDATION_DIR = "validation"


def append_log(directory: Path, records: list[dict[str, Any]]) -> None:
    """Append records to ``train_log.jsonl`` (one JSON object per line), flushed at once."""
    with open(directory / LOG_FILE, "a", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
        handle.flush()


def _replace_into(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_loss(history: list[dict[str, Any]], path: Path) -> bool:
    """Draw loss per step (and a 10-step running mean) with matplotlib; False if it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return False
    steps = [r["step"] for r in history if r.get("event") == "step"]
    losses = [r["loss"] for r in history if r.get("event") == "step"]
    window = [sum(losses[max(0, i - 9):i + 1]) / len(losses[max(0, i - 9):i + 1]) for i in range(len(losses))]
    figure, axes = pyplot.subplots(figsize=(7, 4))
    axes.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    axes.plot(steps, window, lw=1.8, label="mean of last 10")
    axes.set_xlabel("step")
    axes.set_ylabel("noise-prediction MSE")
    axes.legend()
    figure.tight_layout()
    _replace_into(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    pyplot.close(figure)
    return True


def save_image(image: Any, path: Path, text: dict[str, str] | None = None) -> None:
    """A PIL image as PNG (with ``text`` as tEXt chunks), written atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace_into(path, lambda tmp: image.save(tmp, format="PNG", pnginfo=info))

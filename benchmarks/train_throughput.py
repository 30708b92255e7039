"""Training throughput of `resadapter-rt train` on the tiny SD1.5 model at two resolutions.

For each size, a folder of same-size captioned images is generated, a short run trains on it
(batch 2, no checkpoints or validation), and the per-step times the run logs (data loading, VAE
encode, text encode, UNet forward/backward and the AdamW step; not model loading) give images/s,
from the median step after one warm-up step. Writes ``results/train_throughput.json``.

    python benchmarks/train_throughput.py [--steps 8] [--batch-size 2]
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.training import TrainOptions, train

SIZES = ((256, 256), (512, 512))


def _dataset(directory: Path, width: int, height: int, count: int) -> Path:
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True)
    for index in range(count):
        image = Image.new("RGB", (width, height), (40 * index % 256, 90, 160))
        ImageDraw.Draw(image).ellipse((width // 4, height // 4, 3 * width // 4, 3 * height // 4), fill=(230, 200, 40))
        image.save(directory / f"{index}.png")
        (directory / f"{index}.txt").write_text(f"a yellow circle number {index}")
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    add_output_arguments(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for width, height in SIZES:
            data = _dataset(Path(tmp) / f"data-{width}x{height}", width, height, count=2 * args.batch_size)
            load_before = os.getloadavg()[0]
            result = train(TrainOptions(model="tiny-sd15", data=data, out=Path(tmp) / f"run-{width}x{height}", steps=args.steps,
                                        batch_size=args.batch_size, learning_rate=1e-4, checkpointing_steps=0),
                           progress=False, notify=lambda line: None)
            seconds = [r["seconds"] for r in result.history if r["event"] == "step"][1:]
            median = statistics.median(seconds)
            rows.append({"model": "tiny-sd15", "width": width, "height": height, "batch_size": args.batch_size,
                         "measured_steps": len(seconds), "median_step_s": round(median, 4),
                         "min_step_s": round(min(seconds), 4), "images_per_s": round(args.batch_size / median, 2),
                         "load_average_before": round(load_before, 2), "load_average_after": round(os.getloadavg()[0], 2)})
            print(f"{width}x{height} batch {args.batch_size}: median step {median:.3f} s -> {args.batch_size / median:.2f} images/s")
    path = write_json(output_dir(args, "train_throughput") / "train_throughput.json",
                      {"rows": rows, "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                       "machine": platform.machine(), "note": "CPU machine shared with other jobs; see the load averages"})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

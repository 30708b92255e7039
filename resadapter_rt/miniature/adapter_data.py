"""A training folder for ``resadapter-rt train``: shapes at many sizes and aspect ratios, with captions.

    python -m resadapter_rt.miniature.adapter_data --out DIR [--per-size 48] [--seed 7]

Every bucket size with sides in 64..384 px (multiples of 64) and aspect ratio within 1:3..3:1
gets ``--per-size`` images (PNG) and a ``metadata.jsonl`` line each, the Hugging Face imagefolder
convention the trainer reads. The seed differs from the base model's data by default, so the
adapter sees images the base model never did.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .shapes import sample

SIDES = (64, 128, 192, 256, 320, 384)
MAX_ASPECT = 3.0


def bucket_sizes() -> list[tuple[int, int]]:
    """(width, height) pairs the adapter trains at."""
    return [(w, h) for w in SIDES for h in SIDES if max(w, h) / min(w, h) <= MAX_ASPECT]


def write_dataset(out: Path, per_size: int, seed: int) -> int:
    """Write the images and metadata.jsonl into the new directory ``out``; returns the image count."""
    out.mkdir(parents=True, exist_ok=False)
    lines = []
    for width, height in bucket_sizes():
        for index in range(per_size):
            image, spec = sample(seed, index, width, height)
            name = f"{width}x{height}-{index:04d}.png"
            image.save(out / name)
            lines.append(json.dumps({"file_name": name, "text": spec.caption}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="new directory")
    parser.add_argument("--per-size", type=int, default=48, help="images per bucket size (default 48)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; choose a new --out")
    count = write_dataset(args.out, args.per_size, args.seed)
    print(f"wrote {count} images at {len(bucket_sizes())} sizes to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training data: images with captions, checked up front, bucketed so that one batch has one shape.

A data directory holds images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``, ``.bmp``) and their captions,
either in a ``metadata.jsonl`` (one ``{"file_name": ..., "text": ...}`` object per line, the
Hugging Face imagefolder convention) or in a ``.txt`` file beside each image. Every image is
resized to its bucket: each side rounded to the nearest multiple of the resolution multiple (as
the official training script's ``--nearest_resolution_multiple``), after scaling the longer side
down to ``max_side`` if needed. The batch order is a pure function of the seed and the epoch, so a
resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ResAdapterRTError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA = "metadata.jsonl"


@dataclass(frozen=True)
class SizeRules:
    """How images become bucket sizes: sides are multiples of ``multiple`` within [min_side, max_side]."""

    multiple: int = 64
    min_side: int = 128
    max_side: int = 1024

    def check(self) -> "SizeRules":
        if self.multiple < 8 or self.multiple % 8:
            raise ResAdapterRTError(f"--resolution-multiple {self.multiple} is not a positive multiple of 8 (latents are 1/8 "
                                    "of the image); use e.g. 64")
        for name, value in (("--min-side", self.min_side), ("--max-side", self.max_side)):
            if value <= 0 or value % self.multiple:
                raise ResAdapterRTError(f"{name} {value} is not a positive multiple of --resolution-multiple {self.multiple}; "
                                        f"use e.g. {max(1, round(value / self.multiple)) * self.multiple}")
        if self.min_side > self.max_side:
            raise ResAdapterRTError(f"--min-side {self.min_side} is larger than --max-side {self.max_side}; swap them")
        return self

    def bucket(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is trained at."""
        scale = min(1.0, self.max_side / max(width, height))
        low, top = self.min_side // self.multiple, self.max_side // self.multiple

        def side(value: int) -> int:
            return min(top, max(low, round(value * scale / self.multiple))) * self.multiple

        return side(width), side(height)


@dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    size: tuple[int, int]  # original (width, height)
    bucket: tuple[int, int]  # trained (width, height)


def _read_metadata(directory: Path) -> dict[str, str]:
    captions: dict[str, str] = {}
    path = directory / METADATA
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ResAdapterRTError(f"{path}: cannot be read ({exc}); write it as UTF-8 JSON lines") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise ResAdapterRTError(f"{path} line {number}: not valid JSON; each line must be "
                                    '{"file_name": "a.png", "text": "a caption"}') from None
        if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) or not isinstance(entry.get("text"), str):
            raise ResAdapterRTError(f"{path} line {number}: needs string fields 'file_name' and 'text', e.g. "
                                    '{"file_name": "a.png", "text": "a caption"}')
        if not (directory / entry["file_name"]).is_file():
            raise ResAdapterRTError(f"{path} line {number}: {entry['file_name']} is not a file in {directory}")
        captions[entry["file_name"]] = entry["text"]
    return captions


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResAdapterRTError(f"{path}: not a readable image ({reason}); remove it or replace it with a valid file") from None


def scan_dataset(directory: Path, rules: SizeRules) -> list[Sample]:
    """Every image of ``directory`` with its caption and bucket, or a one-line error about the first bad one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ResAdapterRTError(f"{directory}: no such data directory; pass --data DIR holding images and captions")
    images = sorted(p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not images:
        raise ResAdapterRTError(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) found; put captioned images there")
    captions = _read_metadata(directory) if (directory / METADATA).is_file() else {}
    samples = []
    for path in images:
        caption = captions.get(path.name)
        if caption is None and path.with_suffix(".txt").is_file():
            caption = path.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
        if caption is None:
            raise ResAdapterRTError(f"{path}: has no caption; add {path.with_suffix('.txt').name} beside it or a "
                                    f'line {{"file_name": "{path.name}", "text": "..."}} to {METADATA}')
        width, height = _image_size(path)
        if min(width, height) < rules.min_side:
            raise ResAdapterRTError(f"{path}: is {width}x{height}, below --min-side {rules.min_side}; remove it, "
                                    "upscale it, or lower --min-side")
        samples.append(Sample(path, caption, (width, height), rules.bucket(width, height)))
    return samples


def fingerprint(samples: list[Sample]) -> str:
    """A hash of file names, captions, sizes and bytes: a resume refuses data that changed."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(json.dumps([sample.path.name, sample.caption, sample.size, sample.bucket]).encode())
        digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()


def epoch_batches(samples: list[Sample], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of sample indices for one epoch: same-bucket batches, shuffled, a function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    buckets: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(samples):
        buckets.setdefault(sample.bucket, []).append(index)
    batches = []
    for key in sorted(buckets):
        members = buckets[key]
        order = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
        batches += [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def load_pixels(samples: list[Sample], flips: list[bool]) -> torch.Tensor:
    """A batch as a [B, 3, H, W] tensor in [-1, 1], each image resized to its bucket and flipped if asked."""
    import numpy as np
    from PIL import Image

    tensors = []
    for sample, flip in zip(samples, flips):
        with Image.open(sample.path) as image:
            image = image.convert("RGB").resize(sample.bucket, Image.Resampling.BICUBIC)
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32).copy())
        tensors.append(array.permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(tensors).contiguous()  # NCHW: the permute would otherwise carry channels-last strides along


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``256x256,832x384`` -> [(256, 256), (832, 384)]; each side a positive multiple of 8."""
    sizes = []
    for part in text.split(","):
        width, sep, height = part.strip().lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise ResAdapterRTError(f"--validation-sizes: {part.strip()!r} is not WIDTHxHEIGHT; write e.g. 256x256,832x384")
        w, h = int(width), int(height)
        if w <= 0 or h <= 0 or w % 8 or h % 8:
            raise ResAdapterRTError(f"--validation-sizes: {w}x{h} is not made of positive multiples of 8 px; use e.g. 256x256")
        sizes.append((w, h))
    return sizes

"""Recording where artifacts came from: file hashes and merge settings."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable

from .adapter import ResAdapterWeights
from .lora import LoraWeights
from .models import PipelineComponents


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def merge_record(
    components: PipelineComponents, adapter: ResAdapterWeights, alpha: float | None, loras: Iterable[tuple[LoraWeights, float]]
) -> dict:
    """What went into a merged model, for manifests (``alpha`` None means dynamic)."""
    return {
        "model": components.source,
        "family": components.family.name,
        "resadapter": {
            "source": adapter.source,
            "family": adapter.family.name,
            "files": {p.name: sha256_file(p) for p in adapter.files},
            "lora_layers": len(adapter.lora.layers),
            "norm_tensors": len(adapter.norms or {}),
        },
        "alpha": alpha,
        "loras": [{"source": lora.source, "weight": w, "sha256": sha256_file(Path(lora.source))} for lora, w in loras],
    }

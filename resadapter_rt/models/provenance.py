"""Recording what went into a merged model (sources, hashes, merge settings) for manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from ..files import sha256_file
from .adapter import ResAdapterWeights
from .lora import LoraWeights
from .components import PipelineComponents


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

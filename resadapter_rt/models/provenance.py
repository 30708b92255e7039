"""What went into a merged model, recorded for manifests and checked again before it is rebuilt.

Each source is recorded as the user typed it, with its kind (``builtin`` tiny model, ``local``
path, ``hub`` id), the absolute path of a local source, and the sha256 of its files. Rebuilding
from a manifest (the torch backend) uses exactly those files: a local source is never looked up
on the hub, and a changed file is refused rather than silently merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ResAdapterRTError
from ..files import sha256_file
from .adapter import NO_ADAPTER, ResAdapterWeights
from .components import BUILTIN_MODELS, PipelineComponents
from .lora import LoraWeights


def source_entry(reference: str) -> dict:
    """How a user-given model/adapter reference is recorded: its text, kind and absolute local path."""
    if reference in BUILTIN_MODELS or reference == NO_ADAPTER:
        return {"source": reference, "kind": "builtin"}
    path = Path(reference).expanduser()
    if path.exists():
        return {"source": reference, "kind": "local", "path": str(path.resolve())}
    return {"source": reference, "kind": "hub"}


def files_sha256(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every non-hidden file below a directory (keys relative to it)."""
    path = Path(path)
    if path.is_file():
        return {path.name: sha256_file(path)}
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts))
    return {str(p.relative_to(path)): sha256_file(p) for p in files}


def merge_record(
    components: PipelineComponents, adapter: ResAdapterWeights, alpha: float | None, loras: Iterable[tuple[LoraWeights, float]]
) -> dict:
    """What went into a merged model, for manifests (``alpha`` None means dynamic)."""
    model = source_entry(components.source)
    return {
        "model": components.source,
        "model_kind": model["kind"],
        "model_path": model.get("path"),
        "model_files": files_sha256(components.path) if model["kind"] != "builtin" and components.path else {},
        "family": components.family.name,
        "resadapter": {
            **source_entry(adapter.source),
            "family": adapter.family.name if adapter.family else None,
            "files": {p.name: sha256_file(p) for p in adapter.files},
            "lora_layers": len(adapter.lora.layers),
            "norm_tensors": len(adapter.norms or {}),
        },
        "alpha": alpha,
        "loras": [{"source": lora.source, "path": str(Path(lora.source).resolve()), "weight": w,
                   "sha256": sha256_file(Path(lora.source))} for lora, w in loras],
    }


@dataclass(frozen=True)
class RecordedSources:
    """The references to load again, checked against a manifest's record."""

    model: str
    resadapter: str
    loras: list[tuple[Path, float]]


def recorded_path(entry: dict, export_dir: Path, what: str) -> str:
    """Where a recorded source is now: builtin names and hub ids as they are, local paths checked."""
    kind = entry.get("kind") or ("builtin" if entry["source"] in BUILTIN_MODELS else "local")
    if kind in ("builtin", "hub"):
        return entry["source"]
    path = Path(entry.get("path") or entry["source"])
    if not path.is_absolute():  # manifests before absolute paths were recorded
        path = (export_dir / path).resolve()
    if not path.exists():
        raise ResAdapterRTError(f"{export_dir}: the {what} it was exported from, {path}, no longer exists; "
                                "restore it there, or use a backend that runs the exported graphs (onnxruntime)")
    return str(path)


def check_same_files(recorded: dict[str, str], current: dict[str, str], what: str, where: str) -> None:
    """Refuse, in one line naming the file, a source whose files' sha256 differ from what was recorded."""
    for name, digest in recorded.items():
        if current.get(name) != digest:
            state = "is missing" if name not in current else "has changed"
            raise ResAdapterRTError(f"{where}: {what} file {name} {state} since the export; re-export "
                                    "(`resadapter-rt export ... --force`) or restore the original file")


def recorded_sources(sources: dict, export_dir: Path) -> RecordedSources:
    """Resolve a manifest's sources (local paths exactly as recorded) and check the model and LoRA hashes."""
    export_dir = Path(export_dir)
    model = recorded_path({"source": sources["model"], "kind": sources.get("model_kind"), "path": sources.get("model_path")},
                           export_dir, "model")
    if sources.get("model_files"):
        check_same_files(sources["model_files"], files_sha256(Path(model)), "model", model)
    resadapter = recorded_path(sources["resadapter"], export_dir, "ResAdapter")
    loras = []
    for item in sources["loras"]:
        path = Path(recorded_path(item, export_dir, "LoRA"))
        check_same_files({path.name: item["sha256"]}, {path.name: sha256_file(path)}, "LoRA", str(path))
        loras.append((path, item["weight"]))
    return RecordedSources(model=model, resadapter=resadapter, loras=loras)


def check_adapter_files(adapter: ResAdapterWeights, sources: dict) -> None:
    """The loaded adapter's files must hash as recorded."""
    current = {p.name: sha256_file(p) for p in adapter.files}
    check_same_files(sources["resadapter"]["files"], current, "ResAdapter", adapter.source)

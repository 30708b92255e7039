"""The engine manifest (``DIR/manifest.json`` of a ``resadapter-rt build`` directory): reading and checks.

Every check answers in one line what is wrong and the command that fixes it.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ResAdapterRTError
from ..files import onnx_artifact_sha256, read_json_object, sha256_file
from .runtimes import GpuInfo, check_engines_fit_gpu

ENGINE_FORMAT = "resadapter-rt/engines"
ENGINE_FORMAT_VERSION = 2
REQUIRED = {"family": str, "alpha_mode": str, "sources": dict, "runtime": dict, "compute_capabilities": list,
            "profiles": list, "components": dict, "built_at": str}
REQUIRED_COMPONENT = ("engine", "sha256", "size_bytes", "onnx", "onnx_sha256", "precision", "inputs", "outputs")


def read_engine_manifest(directory: Path) -> dict:
    """The engine manifest of ``directory``, refusing a missing, unreadable, foreign or incomplete one."""
    path = Path(directory) / "manifest.json"
    rebuild = f"rebuild with `resadapter-rt build ... --out {directory}`"
    if not path.is_file():
        raise ResAdapterRTError(f"{directory}: no manifest.json; not an engine directory ({rebuild})")
    manifest = read_json_object(path, rebuild)
    if manifest.get("format") != ENGINE_FORMAT or manifest.get("format_version") != ENGINE_FORMAT_VERSION:
        raise ResAdapterRTError(f"{directory}: manifest format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
                                f"{ENGINE_FORMAT} v{ENGINE_FORMAT_VERSION}; {rebuild}")
    for key, kind in REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise ResAdapterRTError(f"{path}: {key!r} is missing or not a JSON {kind.__name__}; {rebuild}")
    for name, component in manifest["components"].items():
        missing = [key for key in REQUIRED_COMPONENT if key not in (component if isinstance(component, dict) else {})]
        if missing:
            raise ResAdapterRTError(f"{path}: component {name!r} lacks {missing[0]!r}; {rebuild}")
    return manifest


def manifest_format(path: Path) -> object:
    """The ``format`` field of a JSON manifest file, or None when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def rebuild_command(directory: Path, manifest: dict) -> str:
    sources = manifest["sources"]
    return (f"resadapter-rt build --model {sources.get('model')} --resadapter {sources.get('resadapter', {}).get('source')} "
            f"--out {directory} --force")


def check_engine_files(directory: Path, manifest: dict, rebuild: str, hash_files: bool = True) -> None:
    """Every engine file exists with its recorded size (and sha256 when ``hash_files``)."""
    for component in manifest["components"].values():
        path = directory / component["engine"]
        if not path.is_file() or path.stat().st_size != component["size_bytes"] or (hash_files and sha256_file(path) != component["sha256"]):
            raise ResAdapterRTError(f"{directory}: engine {component['engine']} is missing or changed since it was built; rebuild: {rebuild}")


def check_export_matches(directory: Path, manifest: dict, rebuild: str) -> None:
    """The export in ``directory/onnx`` is the one the engines were built from (graph + weights sha256).

    The runtime takes alpha, sources and tokenizers from that export, so a re-export without a
    rebuild would describe engines it did not produce.
    """
    for name, component in manifest["components"].items():
        onnx_path = directory / component["onnx"]
        if not onnx_path.is_file() or onnx_artifact_sha256(onnx_path) != component["onnx_sha256"]:
            raise ResAdapterRTError(f"{directory}: engine {name} was not built from {component['onnx']} (the export changed or is "
                                    f"missing since the build), so onnx/manifest.json does not describe it; rebuild: {rebuild}")


def check_engine_manifest(directory: Path, manifest: dict, gpu: GpuInfo, installed_version: str) -> None:
    """Refuse engines for another runtime family, version or GPU, or whose files or export changed."""
    rebuild = rebuild_command(directory, manifest)
    runtime = manifest["runtime"]
    check_engines_fit_gpu(runtime["family"], manifest["compute_capabilities"], gpu, rebuild)
    if runtime["version"] != installed_version:
        raise ResAdapterRTError(f"{directory}: engines were built with {runtime['family']} {runtime['version']} but this is "
                                f"{installed_version}; rebuild: {rebuild}")
    check_engine_files(directory, manifest, rebuild)
    check_export_matches(directory, manifest, rebuild)

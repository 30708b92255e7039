"""The export a build starts from: kept in ``DIR/onnx``, reused while its sources are unchanged.

``build`` never deletes what it did not create: the engine directory may hold only what a build
writes, ``DIR/onnx`` only what an export writes; anything else is refused in one line.
"""

from __future__ import annotations

import gc
from pathlib import Path

from ..errors import ResAdapterRTError
from ..export.exporter import ExportOptions, check_export_files, export_pipeline, read_manifest
from ..files import ARTIFACT_MARKER, sha256_file
from .manifest import ENGINE_FORMAT, manifest_format
from .profiles import FAMILY_PIXEL_RANGE

# build_request.json: written by builds before engine manifest v2 (their directories stay usable)
BUILD_OUTPUTS = {"onnx", "engines", "manifest.json", "build_request.json", ".build.lock", "timing.cache", ARTIFACT_MARKER}
BUILD_TEMPORARIES = (".onnx.", ".manifest.json.")  # atomic writes in progress, or left by a killed build
EXPORT_OUTPUTS = {"manifest.json", "model_index.json", "tokenizer", "tokenizer_2", "scheduler", ARTIFACT_MARKER}
COMPONENT_FILES = {"model.onnx", "model.onnx.data", "config.json"}
EXPORT_KEYS = {"family": str, "alpha_mode": str, "opset": int, "dtype": str, "target": str, "torch_version": str,
               "sources": dict, "components": dict}
EXPORT_COMPONENT_KEYS = ("path", "dtype", "inputs", "validation")


def checked_export_manifest(directory: Path, require_files: bool = True) -> dict:
    """The export manifest of ``directory`` with the keys build and inspect read (and, with
    ``require_files``, its graphs and weights on disk); else one line."""
    manifest = read_manifest(directory)
    path = directory / "manifest.json"
    for key, kind in EXPORT_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise ResAdapterRTError(f"{path}: {key!r} is missing or not a JSON {kind.__name__}; re-export it (`resadapter-rt export ... --force`)")
    if manifest["family"] not in FAMILY_PIXEL_RANGE:
        raise ResAdapterRTError(f"{path}: unknown model family {manifest['family']!r}; re-export it")
    for name, component in manifest["components"].items():
        missing = [k for k in EXPORT_COMPONENT_KEYS if k not in (component if isinstance(component, dict) else {})]
        if missing:
            raise ResAdapterRTError(f"{path}: component {name!r} lacks {missing[0]!r}; re-export it")
    if require_files:
        check_export_files(directory, manifest)
    return manifest


def check_engine_dir(out: Path) -> None:
    """``out`` is absent, empty, or a directory ``resadapter-rt build`` wrote (nothing else in it)."""
    if out.exists() and not out.is_dir():
        raise ResAdapterRTError(f"{out}: exists and is not a directory; choose another --out")
    if not out.is_dir():
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in BUILD_OUTPUTS and not p.name.startswith(BUILD_TEMPORARIES))
    if foreign:
        raise ResAdapterRTError(f"{out}: holds {foreign[0]!r}, which `resadapter-rt build` did not write; "
                                "choose an empty or new --out (nothing was changed)")
    manifest = out / "manifest.json"
    if manifest.exists() and manifest_format(manifest) != ENGINE_FORMAT:
        raise ResAdapterRTError(f"{manifest}: not an engine manifest of `resadapter-rt build`; choose another --out (nothing was changed)")


def check_own_export(export_dir: Path) -> dict:
    """The manifest of ``export_dir`` if it is an export holding only what the export wrote; else one line."""
    try:
        read_manifest(export_dir)
    except ResAdapterRTError:
        raise ResAdapterRTError(f"{export_dir}: exists and is not a resadapter-rt export; move it away or choose another "
                                "--out (build never replaces what it did not create)") from None
    manifest = checked_export_manifest(export_dir, require_files=False)
    components = {spec["path"].split("/")[0] for spec in manifest["components"].values()}
    for entry in export_dir.iterdir():
        inside = {p.name for p in entry.iterdir()} - COMPONENT_FILES if entry.name in components and entry.is_dir() else set()
        if entry.name not in EXPORT_OUTPUTS | components or inside:
            name = entry.name if not inside else f"{entry.name}/{sorted(inside)[0]}"
            raise ResAdapterRTError(f"{export_dir}: holds {name!r}, which the export did not write; move it away or choose "
                                    "another --out (build never replaces what it did not create)")
    return manifest


def stale_reason(manifest: dict, options: ExportOptions, export_dir: Path) -> str | None:
    """Why the export in ``export_dir`` cannot stand for ``options`` (None: it can be reused).

    Settings are compared as recorded; the adapter files and extra LoRAs by their recorded sha256,
    so an edited file under the same path is noticed; a local model by the recorded sha256 of its files.
    """
    from ..models.adapter import load_adapter
    from ..models.controlnet import recorded_controlnets
    from ..models.merge import parse_lora_spec
    from ..models.provenance import files_sha256

    try:
        checked_export_manifest(export_dir)
    except ResAdapterRTError as exc:
        return str(exc).split("; re-export")[0]
    sources = manifest["sources"]
    alpha = "dynamic" if manifest["alpha_mode"] == "dynamic" else manifest["alpha"]
    wanted_alpha = "dynamic" if options.alpha == "dynamic" else float(options.alpha)
    if (sources["model"], sources["resadapter"]["source"], alpha, manifest["dtype"]) != \
            (options.model, options.resadapter, wanted_alpha, options.dtype):
        return "model, adapter, alpha or dtype differ from the existing export"
    wanted_loras = [parse_lora_spec(s) for s in options.loras]
    if [(item["source"], item["weight"]) for item in sources["loras"]] != wanted_loras:
        return "the extra LoRAs or their weights differ"
    for item in sources["loras"]:
        if not Path(item["source"]).is_file() or sha256_file(Path(item["source"])) != item["sha256"]:
            return f"LoRA {item['source']} changed since the export"
    if [item["source"] for item in manifest.get("controlnets") or []] != list(options.controlnets):
        return "the ControlNets differ from the existing export"
    try:
        recorded_controlnets(manifest.get("controlnets") or [], export_dir)
    except ResAdapterRTError as exc:
        return str(exc).split("; re-export")[0]
    if ("vae_encoder" in manifest["components"]) != bool(options.vae_encoder):
        return f"the existing export {'has' if 'vae_encoder' in manifest['components'] else 'lacks'} the VAE encoder"
    ip_reason = _ip_adapter_stale_reason(manifest.get("ip_adapter"), options, export_dir)
    if ip_reason:
        return ip_reason
    adapter = load_adapter(options.resadapter)
    if {p.name: sha256_file(p) for p in adapter.files} != sources["resadapter"]["files"]:
        return f"adapter {options.resadapter} changed since the export"
    if sources.get("model_files"):
        path = Path(sources.get("model_path") or options.model)
        if not path.exists() or files_sha256(path) != sources["model_files"]:
            return f"model {options.model} changed since the export"
    return None


def _ip_adapter_stale_reason(entry: dict | None, options: ExportOptions, export_dir: Path) -> str | None:
    """Why the export's IP-Adapter (file, encoder, scale, their hashes) does not stand for ``options``, or None."""
    from ..models.ip_adapter import default_image_encoder, recorded_ip_adapter

    if entry is None or options.ip_adapter is None:
        return None if entry is None and options.ip_adapter is None else "the IP-Adapter differs from the existing export"
    encoder = options.image_encoder or default_image_encoder(options.ip_adapter)
    scale = "dynamic" if entry["scale_mode"] == "dynamic" else entry["scale"]
    if (entry["source"], entry["image_encoder"]["source"], scale) != (options.ip_adapter, encoder, options.ip_adapter_scale):
        return "the IP-Adapter, its image encoder or its scale differ from the existing export"
    try:
        recorded_ip_adapter(entry, export_dir)
    except ResAdapterRTError as exc:
        return str(exc).split("; re-export")[0]
    return None


def prepare_export(out: Path, options: ExportOptions, force: bool, progress=print) -> dict:
    """The validated export in ``out/onnx``: reused when current (and not ``force``), else (re-)exported."""
    check_engine_dir(out)
    export_dir = out / "onnx"
    if export_dir.exists():
        manifest = check_own_export(export_dir)
        reason = "--force" if force else stale_reason(manifest, options, export_dir)
        if reason is None:
            progress(f"[build] reusing the validated export in {export_dir}")
            return manifest
        progress(f"[build] re-exporting {export_dir}: {reason}")
    manifest = export_pipeline(options, export_dir, force=True, progress=progress)
    gc.collect()  # the export's networks (GBs at full size) are garbage now; free them before the engine builds
    return manifest


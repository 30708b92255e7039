"""The export a build starts from: kept in ``DIR/onnx``, reused while its sources are unchanged.

``build`` never deletes what it did not create: the engine directory may hold only what a build
writes, ``DIR/onnx`` only what an export writes; anything else is refused in one line.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from ..errors import ResAdapterRTError
from ..export.exporter import ExportOptions, export_pipeline, read_manifest
from ..files import sha256_file
from .manifest import ENGINE_FORMAT, manifest_format

# ".resadapter-rt": the marker file the lead's branch writes into every directory the tool creates.
MARKER = ".resadapter-rt"
# build_request.json: written by builds before engine manifest v2 (their directories stay usable)
BUILD_OUTPUTS = {"onnx", "engines", "manifest.json", "build_request.json", ".build.lock", "timing.cache", MARKER}
BUILD_TEMPORARIES = (".onnx.", ".manifest.json.")  # atomic writes in progress, or left by a killed build
EXPORT_OUTPUTS = {"manifest.json", "tokenizer", "tokenizer_2", "scheduler", MARKER}
COMPONENT_FILES = {"model.onnx", "model.onnx.data"}


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
        manifest = read_manifest(export_dir)
    except ResAdapterRTError:
        raise ResAdapterRTError(f"{export_dir}: exists and is not a resadapter-rt export; move it away or choose another "
                                "--out (build never replaces what it did not create)") from None
    components = {spec["path"].split("/")[0] for spec in manifest["components"].values()}
    for entry in export_dir.iterdir():
        inside = {p.name for p in entry.iterdir()} - COMPONENT_FILES if entry.name in components and entry.is_dir() else set()
        if entry.name not in EXPORT_OUTPUTS | components or inside:
            name = entry.name if not inside else f"{entry.name}/{sorted(inside)[0]}"
            raise ResAdapterRTError(f"{export_dir}: holds {name!r}, which the export did not write; move it away or choose "
                                    "another --out (build never replaces what it did not create)")
    return manifest


def stale_reason(manifest: dict, options: ExportOptions) -> str | None:
    """Why an export cannot stand for ``options`` (None: it can be reused).

    Settings are compared as recorded; the adapter files and extra LoRAs by their recorded sha256,
    so an edited file under the same path is noticed. The manifest records no hash of the model
    itself: a local model counts as changed when one of its files is newer than the export.
    """
    from ..models.adapter import load_adapter
    from ..models.merge import parse_lora_spec

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
    adapter = load_adapter(options.resadapter)
    if {p.name: sha256_file(p) for p in adapter.files} != sources["resadapter"]["files"]:
        return f"adapter {options.resadapter} changed since the export"
    model = Path(options.model)
    if model.exists():
        created = datetime.datetime.fromisoformat(manifest["created"]).timestamp()
        files = [model] if model.is_file() else [p for p in model.rglob("*") if p.is_file()]
        if any(p.stat().st_mtime > created for p in files):
            return f"model {options.model} has files modified after the export was created"
    return None


def prepare_export(out: Path, options: ExportOptions, force: bool, progress=print) -> dict:
    """The validated export in ``out/onnx``: reused when current (and not ``force``), else (re-)exported."""
    check_engine_dir(out)
    export_dir = out / "onnx"
    if export_dir.exists():
        manifest = check_own_export(export_dir)
        reason = "--force" if force else stale_reason(manifest, options)
        if reason is None:
            progress(f"[build] reusing the validated export in {export_dir}")
            return manifest
        progress(f"[build] re-exporting {export_dir}: {reason}")
    return export_pipeline(options, export_dir, force=True, progress=progress)


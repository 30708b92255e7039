"""Helpers shared by the engine tests: one tiny SDXL export per session (exporting is the slow part)."""

from __future__ import annotations

import shutil
from pathlib import Path

from resadapter_rt.cache import cached_directory
from resadapter_rt.export.exporter import ExportOptions, export_pipeline


def shared_sdxl_export() -> Path:
    """A directory holding ``onnx/``: tiny SDXL, fp32, dynamic alpha, target tensorrt (built once per
    session in the test cache). Copy it before changing anything."""
    def export(directory: Path) -> None:
        export_pipeline(ExportOptions(model="tiny-sdxl", resadapter="tiny-sdxl", alpha="dynamic", target="tensorrt",
                                      validation_sizes=((384, 264, 1),)), directory / "onnx", progress=lambda m: None)

    return cached_directory("tests/engines/tiny-sdxl-dynamic", export)


def fresh_engine_dir(export_dir: Path, directory: Path) -> Path:
    """``directory`` with a copy of the shared export in ``onnx/``."""
    shutil.copytree(export_dir / "onnx", directory / "onnx")
    return directory

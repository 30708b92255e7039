"""A real TensorRT-RTX build whose profile stops at 1024 px covers a 2048x2048 request in tiles (``inspect``)."""

from __future__ import annotations

import pytest

from resadapter_rt.cli import main
from resadapter_rt.engines.build import BuildOptions, build_engines
from resadapter_rt.engines.profiles import ResolutionProfile
from resadapter_rt.export.exporter import ExportOptions, export_pipeline

pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX is not installed (pip install -e '.[tensorrt-rtx]')")


def test_rtx_engines_512_to_1024_cover_a_2048_request_in_tiles(tmp_path, capsys):
    directory = tmp_path / "engines"
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", target="tensorrt",
                                  validation_sizes=((512, 512, 1),)), directory / "onnx", progress=lambda m: None)
    build_engines(directory, BuildOptions(profiles=(ResolutionProfile.parse("512-1024"),), compute_capabilities=("8.6",)),
                  progress=lambda m: None)
    assert main(["inspect", str(directory), "--size", "2048x2048"]) == 1
    assert "2048x2048: NOT covered by the engine profiles" in capsys.readouterr().out
    assert main(["inspect", str(directory), "--size", "2048x2048", "--tile-size", "1024", "--tile-stride", "768"]) == 0
    assert ("2048x2048 in tiles of 1024 px (stride 768): 9 UNet windows of 1024x1024, covered by the engine profiles"
            in capsys.readouterr().out.splitlines())
    assert main(["inspect", str(directory), "--size", "2048x2048", "--tile-size", "384"]) == 1  # below the profile's 512
    assert "36 UNet windows of 384x384, NOT covered by the engine profiles" in capsys.readouterr().out

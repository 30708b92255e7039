"""What a build leaves (no lock file, the artifact marker) and ``inspect --size``'s exit status (1: not covered)."""

from __future__ import annotations

import json
import shutil

import pytest

from cli_harness import run_main
from engine_fixtures import fresh_engine_dir, shared_sdxl_export
from resadapter_rt.engines.build import BuildOptions, BuildTarget, build_engines
from resadapter_rt.engines.profiles import ResolutionProfile
from resadapter_rt.files import ARTIFACT_MARKER, created_by_us

RTX = BuildTarget("tensorrt-rtx", "1.7.1.116", ["8.6"])


def fake_builder(job, destination):
    """Stands in for the TensorRT child process only."""
    destination.write_bytes(b"engine " + json.dumps(job["profiles"]).encode())


@pytest.fixture(scope="module")
def engine_dir(tmp_path_factory):
    """Engines (faked) for 256-512 px over the shared tiny SDXL export."""
    directory = fresh_engine_dir(shared_sdxl_export(), tmp_path_factory.mktemp("engines") / "e")
    build_engines(directory, BuildOptions(profiles=(ResolutionProfile.parse("256-512"),)), target=lambda options: RTX,
                  builder=fake_builder, progress=lambda m: None)
    return directory


def test_build_leaves_no_lock_and_marks_its_directory(engine_dir):
    assert sorted(p.name for p in engine_dir.iterdir()) == [ARTIFACT_MARKER, "engines", "manifest.json", "onnx"]
    assert created_by_us(engine_dir)


@pytest.mark.parametrize("size,status,line", [
    ("384x256", 0, "384x256: covered by the engine profiles"),
    ("1000x600", 1, "1000x600: NOT covered by the engine profiles"),  # the export covers it; the engines decide
])
def test_inspect_size_on_engines_exits_1_when_not_covered(engine_dir, capsys, size, status, line):
    result = run_main(["inspect", str(engine_dir), "--size", size], capsys)
    assert result.returncode == status and line in result.stdout.splitlines()


@pytest.mark.parametrize("pixel_range,size,status,line", [
    (None, "1000x600", 0, "1000x600: covered by the ONNX export (256-1536 px per side, multiples of 8)"),
    (None, "2048x512", 1, "2048x512: NOT covered by the ONNX export (256-1536 px per side, multiples of 8)"),
    ([64, 512], "64x64", 0, "64x64: covered by the ONNX export (64-512 px per side, multiples of 8)"),  # the model's own range
    ([64, 512], "768x512", 1, "768x512: NOT covered by the ONNX export (64-512 px per side, multiples of 8)"),
])
def test_inspect_size_on_an_export_exits_1_when_not_covered(tmp_path, capsys, pixel_range, size, status, line):
    export = tmp_path / "x"
    shutil.copytree(shared_sdxl_export() / "onnx", export)
    if pixel_range:
        manifest = json.loads((export / "manifest.json").read_text())
        (export / "manifest.json").write_text(json.dumps(manifest | {"pixel_range": pixel_range}))
    result = run_main(["inspect", str(export), "--size", size], capsys)
    assert result.returncode == status and line in result.stdout.splitlines()


def test_inspect_without_size_exits_0(engine_dir, capsys):
    assert run_main(["inspect", str(engine_dir)], capsys).returncode == 0

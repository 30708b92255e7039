"""Bad input to ``build`` and ``inspect``: exit 2, one line on stderr naming the problem and the fix, no
traceback, and the directory tree exactly as it was (nothing created, changed or removed). Also what a
good build leaves (no lock file, the artifact marker) and ``inspect --size``'s exit status (1: not covered)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_harness import assert_one_line_error, run_cli, run_main, tree_snapshot
from engine_fixtures import fresh_engine_dir, shared_sdxl_export
from resadapter_rt.engines.build import BuildOptions, BuildTarget, build_engines
from resadapter_rt.engines.profiles import ResolutionProfile
from resadapter_rt.engines.runtimes import TENSORRT, importable
from resadapter_rt.files import ARTIFACT_MARKER, created_by_us

BUILD = ["build", "--model", "tiny-sd15", "--resadapter", "tiny-sd15", "--out", "e"]
REFUSED = "or use --runtime tensorrt"
RTX = BuildTarget("tensorrt-rtx", "1.7.1.116", ["8.6"])


def nothing(root: Path) -> None:
    """No setup."""


def user_dir_in_onnx(root: Path) -> None:
    (root / "e/onnx").mkdir(parents=True)
    (root / "e/onnx/thesis.txt").write_text("draft")


def user_file_in_out(root: Path) -> None:
    (root / "e").mkdir()
    (root / "e/mydata.txt").write_text("mine")


def foreign_manifest_in_out(root: Path) -> None:
    (root / "e").mkdir()
    (root / "e/manifest.json").write_text(json.dumps({"format": "someone-else"}))


def text_manifest(root: Path) -> None:
    (root / "x").mkdir()
    (root / "x/manifest.json").write_text("{not json")


def list_manifest(root: Path) -> None:
    (root / "x").mkdir()
    (root / "x/manifest.json").write_text("[1, 2]")


def export_copy(root: Path) -> Path:
    shutil.copytree(shared_sdxl_export() / "onnx", root / "x")
    return root / "x"


def export_without_family(root: Path) -> None:
    manifest = json.loads((export_copy(root) / "manifest.json").read_text())
    del manifest["family"]
    (root / "x/manifest.json").write_text(json.dumps(manifest))


def export_without_unet_graph(root: Path) -> None:
    (export_copy(root) / "unet/model.onnx").unlink()


def engine_manifest(root: Path, **fields) -> None:
    (root / "x").mkdir()
    (root / "x/manifest.json").write_text(json.dumps({"format": "resadapter-rt/engines", "format_version": 2, **fields}))


CASES = {
    "profile with a malformed aspect": (nothing, BUILD + ["--profile", "128-1024@1.2.3-2"],
        "error: profile '128-1024@1.2.3-2' is not MIN-MAX[@AMIN-AMAX][,opt=WxH][,batch=A-B][,tokens=A-B], e.g. 256-1024@0.28-3.5,opt=768x768"),
    "static size with a zero side": (nothing, BUILD + ["--static", "512x0"],
        "error: static size '512x0': width and height must be positive multiples of 8 px, e.g. 1000x600"),
    "precision flag with TensorRT-RTX": (nothing, BUILD + ["--runtime", "tensorrt-rtx", "--precision", "fp16"],
        "error: --precision is not available with TensorRT-RTX: its networks are strongly typed and take the export's dtype; "
        f"use --dtype fp16 (or fp32) instead, {REFUSED}"),
    "refittable with TensorRT-RTX": (nothing, BUILD + ["--runtime", "tensorrt-rtx", "--refittable"],
        "error: --refittable is not available for TensorRT-RTX builds (refit needs a GPU); drop it: a changed export is rebuilt "
        f"automatically (engines are keyed by the ONNX hash), {REFUSED}"),
    "timing cache with TensorRT-RTX": (nothing, BUILD + ["--runtime", "tensorrt-rtx", "--timing-cache", "t.cache"],
        "error: --timing-cache is not available with TensorRT-RTX: it has no builder timing cache (kernels are compiled at "
        f"first run and kept in the runtime cache in the engine directory); drop it, {REFUSED}"),
    "Hopper compute capability with TensorRT-RTX": (nothing, BUILD + ["--runtime", "tensorrt-rtx", "--compute-capability", "8.6,9.0"],
        "error: --compute-capability '9.0' is not a TensorRT-RTX target; choose from 7.5, 8.0, 8.6, 8.9, 12.0, 12.1 "
        "(Hopper 9.0 and Blackwell 10.x need --runtime tensorrt)"),
    "a user directory in OUT/onnx": (user_dir_in_onnx, BUILD,
        "error: e/onnx: exists and is not a resadapter-rt export; move it away or choose another --out (build never replaces "
        "what it did not create)"),
    "a user file in OUT": (user_file_in_out, BUILD,
        "error: e: holds 'mydata.txt', which `resadapter-rt build` did not write; choose an empty or new --out (nothing was changed)"),
    "a foreign manifest in OUT": (foreign_manifest_in_out, BUILD,
        "error: e/manifest.json: not an engine manifest of `resadapter-rt build`; choose another --out (nothing was changed)"),
    "inspect: manifest not JSON": (text_manifest, ["inspect", "x"],
        "error: x/manifest.json: not valid JSON; re-run `resadapter-rt export`"),
    "inspect: manifest not an object": (list_manifest, ["inspect", "x"],
        "error: x/manifest.json: expected a JSON object, found list; re-run `resadapter-rt export`"),
    "inspect: export manifest lacks a key": (export_without_family, ["inspect", "x"],
        "error: x/manifest.json: incomplete manifest (missing family); re-run `resadapter-rt export ... --force`"),
    "inspect: export lost its UNet graph": (export_without_unet_graph, ["inspect", "x", "--size", "512x512"],
        "error: x: unet/model.onnx is missing, so this export is incomplete; re-export it (`resadapter-rt export ... --force`)"),
    "inspect: engine manifest lacks keys": (lambda root: engine_manifest(root), ["inspect", "x"],
        "error: x/manifest.json: 'family' is missing or not a JSON str; rebuild with `resadapter-rt build ... --out x`"),
    "inspect: engine manifest of another version": (lambda root: engine_manifest(root, format_version=1), ["inspect", "x"],
        "error: x: manifest format 'resadapter-rt/engines' v1 is not resadapter-rt/engines v2; rebuild with "
        "`resadapter-rt build ... --out x`"),
}
if not importable(TENSORRT):
    CASES["data-center TensorRT not installed"] = (nothing, BUILD + ["--runtime", "tensorrt"],
        "error: --runtime tensorrt: module tensorrt is not installed here; pip install tensorrt (from NVIDIA's index) on a "
        "machine with an NVIDIA GPU")


@pytest.mark.parametrize("case", list(CASES))
def test_bad_engine_input_is_one_line_and_touches_nothing(case, tmp_path):
    setup, args, expected = CASES[case]
    setup(tmp_path)
    before = tree_snapshot(tmp_path)
    line = assert_one_line_error(run_cli(args, cwd=tmp_path), expected)
    assert line == expected
    assert tree_snapshot(tmp_path) == before


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

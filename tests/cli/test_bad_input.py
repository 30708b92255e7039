"""Bad input to every command: exit 2, one line on stderr, no traceback, and nothing created, changed or removed.

Each case prepares a scratch directory (the working directory of the command), snapshots its
tree, runs the command in-process, and checks the snapshot again. ``build`` and ``inspect``
cases live beside the engine tests (tests/engines/).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

from cli_harness import assert_bad_input_touches_nothing, assert_one_line_error, run_cli, run_main, tree_snapshot
from conftest import quiet
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import tiny_pipeline_dir


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("good") / "export"
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=0.8, validation_sizes=((328, 200, 1),)),
                    out, progress=quiet)
    return out


# -- scratch-directory builders: each returns nothing and works inside the case's directory ---------------
def copy_export(good: Path, root: Path, edit: Callable[[Path], None] | None = None) -> None:
    shutil.copytree(good, root / "exp")
    if edit:
        edit(root / "exp")


def edit_manifest(change: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(export: Path) -> None:
        manifest = json.loads((export / "manifest.json").read_text())
        result = change(manifest)
        (export / "manifest.json").write_text(json.dumps(manifest if result is None else result))
    return apply


def model_copy(root: Path, edit: Callable[[Path], None]) -> None:
    shutil.copytree(tiny_pipeline_dir(SD15), root / "model")
    edit(root / "model")


def set_index(key: str, value) -> Callable[[Path], None]:
    def apply(model: Path) -> None:
        index = json.loads((model / "model_index.json").read_text())
        index[key] = value
        (model / "model_index.json").write_text(json.dumps(index))
    return apply


def user_dir(root: Path) -> None:
    (root / "mydata").mkdir()
    (root / "mydata" / "thesis.txt").write_text("draft")


TINY = ["--model", "tiny-sd15", "--resadapter", "tiny-sd15"]
GEN_NO_STEPS = ["generate", "--artifacts", "exp", "--prompt", "a cat", "--width", "128", "--height", "128", "-q"]
GEN = [*GEN_NO_STEPS, "--steps", "2"]

# (id, setup(root, good_export), argv, expected text in the single error line)
CASES = [
    # merge
    ("merge-missing-model", None, ["merge", "--resadapter", "tiny-sd15", "--out", "o"],
     "the following arguments are required: --model (see `resadapter-rt merge --help`)"),
    ("merge-alpha-range", None, ["merge", *TINY, "--alpha", "3", "--out", "o"], "alpha '3' is out of range"),
    ("merge-no-model", None, ["merge", "--model", "nowhere", "--resadapter", "tiny-sd15", "--out", "o"],
     "nowhere: no such file or directory"),
    ("merge-broken-index", lambda r, g: model_copy(r, lambda m: (m / "model_index.json").write_text("{oops")),
     ["merge", "--model", "model", "--resadapter", "tiny-sd15", "--out", "o"], "model_index.json: not valid JSON"),
    ("merge-unknown-library", lambda r, g: model_copy(r, set_index("unet", ["evil_lib", "UNet"])),
     ["merge", "--model", "model", "--resadapter", "tiny-sd15", "--out", "o"],
     "'unet' comes from library 'evil_lib'; only diffusers, transformers components are loaded"),
    ("merge-unknown-class", lambda r, g: model_copy(r, set_index("unet", ["diffusers", "NoSuchUNet"])),
     ["merge", "--model", "model", "--resadapter", "tiny-sd15", "--out", "o"], "names diffusers.NoSuchUNet, which diffusers does not have"),
    ("merge-missing-weights", lambda r, g: model_copy(r, lambda m: [p.unlink() for p in (m / "unet").glob("*.safetensors")]),
     ["merge", "--model", "model", "--resadapter", "tiny-sd15", "--out", "o"], "could not load the unet"),
    ("merge-force-user-dir", lambda r, g: user_dir(r), ["merge", *TINY, "--out", "mydata", "--force"],
     "mydata: directory is not empty and was not created by resadapter-rt, so it is left alone"),
    ("merge-lora-weight", None, ["merge", *TINY, "--lora", "x.safetensors:abc", "--out", "o"], "weight 'abc' is not a number"),
    ("merge-hub-dotdot", None, ["merge", "--model", "tiny-sd15", "--resadapter", "owner/repo/../../etc", "--out", "o"],
     "a hub reference is owner/repo[/subfolder] without '.', '..' or empty parts"),
    # export
    ("export-out-cwd", None, ["export", *TINY, "--out", ".", "-q"], ".: is the current directory (or holds it)"),
    ("export-out-file", lambda r, g: (r / "afile").write_text("x"), ["export", *TINY, "--out", "afile", "-q"],
     "afile: exists and is not a directory"),
    ("export-dtype", None, ["export", *TINY, "--dtype", "fp64", "--out", "o", "-q"], "unknown dtype 'fp64'; choose fp32 or fp16"),
    ("export-vae-encoder-unet-only", lambda r, g: shutil.copytree(tiny_pipeline_dir(SD15) / "unet", r / "unet"),
     ["export", "--model", "unet", "--resadapter", "tiny-sd15", "--vae-encoder", "--out", "o", "-q"],
     "--vae-encoder needs the model's VAE, but unet is a UNet only; export a whole pipeline directory or checkpoint for image-to-image"),
    ("export-validation-sizes", None, ["export", *TINY, "--validation-sizes", "328x200x2,1000", "--out", "o", "-q"],
     "--validation-sizes: '1000' is not WIDTHxHEIGHT[xBATCH]; write e.g. 328x200x2,1000x600 "
     "(default 328x200x2,1000x600x1,280x1000x1,1008x288x1)"),
    ("export-validation-odd", None, ["export", *TINY, "--validation-sizes", "330x200", "--out", "o", "-q"],
     "validation size 330x200 is not a multiple of 8 px"),
    ("export-target", None, ["export", *TINY, "--target", "tpu", "--out", "o", "-q"], "unknown target 'tpu'"),
    ("export-user-dir", lambda r, g: user_dir(r), ["export", *TINY, "--out", "mydata", "--force", "-q"],
     "was not created by resadapter-rt, so it is left alone"),
    # generate
    ("generate-no-artifacts", None, GEN, "exp: no such artifacts directory"),
    ("generate-no-unet", lambda r, g: copy_export(g, r, lambda e: (e / "unet" / "model.onnx").unlink()), GEN,
     "exp: unet/model.onnx is missing, so this export is incomplete"),
    ("generate-no-scheduler", lambda r, g: copy_export(g, r, lambda e: shutil.rmtree(e / "scheduler")), GEN,
     "exp: scheduler/ is missing, so this export is incomplete"),
    ("generate-no-tokenizer", lambda r, g: copy_export(g, r, lambda e: shutil.rmtree(e / "tokenizer")), GEN,
     "exp: tokenizer/ is missing, so this export is incomplete"),
    ("generate-cuda-target", lambda r, g: copy_export(g, r, edit_manifest(lambda m: m.update(target="cuda"))), GEN,
     "this export targets CUDA (its fused GroupNorm ops have no CPU kernels)"),
    ("generate-path-escapes", lambda r, g: copy_export(g, r, edit_manifest(
        lambda m: m["components"]["unet"].update(path="../../etc/model.onnx"))), GEN,
     "component unet has path '../../etc/model.onnx', which is not inside the export directory"),
    ("generate-manifest-not-json", lambda r, g: copy_export(g, r, lambda e: (e / "manifest.json").write_text("{")), GEN,
     "manifest.json: not valid JSON"),
    ("generate-manifest-list", lambda r, g: copy_export(g, r, edit_manifest(lambda m: [m])), GEN,
     "manifest.json: expected a JSON object, found list"),
    ("generate-manifest-keys", lambda r, g: copy_export(g, r, edit_manifest(lambda m: m.pop("components") and None)), GEN,
     "incomplete manifest (missing components)"),
    ("generate-output-dir", lambda r, g: (copy_export(g, r), (r / "pics").mkdir()), [*GEN, "-o", "pics"],
     "pics: is a directory; pass a file name for -o/--output"),
    ("generate-seed-range", lambda r, g: copy_export(g, r), [*GEN, "--seed", str(2**64)],
     f"seed {2**64} is out of range"),
    ("generate-seed-text", lambda r, g: copy_export(g, r), [*GEN, "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    ("generate-size-with-progress", lambda r, g: copy_export(g, r),  # without -q: no progress bar before the error
     ["generate", "--artifacts", "exp", "--prompt", "a cat", "--width", "2048", "--height", "128", "--steps", "2"],
     "width 2048 px is outside what exp covers (128-1024 px per side, every multiple of 8)"),
    ("generate-lcm-steps", lambda r, g: copy_export(g, r), [*GEN_NO_STEPS, "--steps", "60", "--scheduler", "lcm"],
     "60 steps is more than the lcm scheduler supports here (at most 50)"),
    ("generate-ddim-steps", lambda r, g: copy_export(g, r), [*GEN_NO_STEPS, "--steps", "1001", "--scheduler", "ddim"],
     "1001 steps is more than the ddim scheduler supports here (at most 1000)"),
    ("generate-odd-width", lambda r, g: copy_export(g, r), [*GEN, "--width", "333"],
     "width 333 is not a multiple of 8 px; use e.g. 328"),
    # the hint is a size the model accepts (128-1024 px here), not the nearest multiple of 8 below the minimum or above the maximum
    ("generate-odd-width-below-range", lambda r, g: copy_export(g, r), [*GEN, "--width", "100"],
     "width 100 is not a multiple of 8 px; use e.g. 128"),
    ("generate-odd-height-above-range", lambda r, g: copy_export(g, r), [*GEN, "--height", "1030"],
     "height 1030 is not a multiple of 8 px; use e.g. 1024"),
    ("generate-backend", lambda r, g: copy_export(g, r), [*GEN, "--backend", "cuda"], "unknown backend 'cuda'"),
    # demo
    ("demo-user-dir", lambda r, g: user_dir(r), ["demo", "--artifacts", "mydata", "-q"],
     "mydata: not an export and not created by resadapter-rt, so demo leaves it alone"),
    ("demo-output-is-file", lambda r, g: (r / "afile").write_text("x"), ["demo", "--output-dir", "afile", "-q"],
     "cannot write here (afile is not a writable directory)"),
]


@pytest.mark.parametrize("setup,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_touches_nothing(setup, argv, expected, good_export, tmp_path, monkeypatch, capsys):
    root = tmp_path / "work"
    root.mkdir()
    if setup is not None:
        setup(root, good_export)
    assert_bad_input_touches_nothing(root, argv, expected, monkeypatch, capsys)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A write that fails mid-export (RLIMIT_FSIZE gives EFBIG, as a full disk gives ENOSPC)."""
    root = tmp_path / "work"
    root.mkdir()
    before = tree_snapshot(root)
    result = run_cli(["export", *TINY, "--out", "o", "-q"], cwd=root, max_file_bytes=64 * 1024)
    assert_one_line_error(result, "File too large (free disk space or write elsewhere); nothing was written")
    assert tree_snapshot(root) == before


def test_generate_from_tiny_weights_says_so_in_the_png_and_the_summary(good_export, tmp_path, capsys):
    """Not bad input, but this module's export is the tiny one: its images are noise-like, and generate says why."""
    from PIL import Image

    result = run_main(["generate", "--artifacts", str(good_export), "--prompt", "a cat", "--width", "128", "--height", "128",
                       "--steps", "2", "-q", "-o", str(tmp_path / "a.png")], capsys)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(" | random weights (model tiny-sd15, ResAdapter tiny-sd15): a test image, "
                                          "not a trained model's output")
    assert json.loads(Image.open(tmp_path / "a.png").text["parameters"])["random_weights"] == ["model tiny-sd15", "ResAdapter tiny-sd15"]


def test_subprocess_usage_error_is_one_line(tmp_path):
    """Seen as a user sees it: argparse's usage text is replaced by one line."""
    result = run_cli(["generate", "--artifacts", "x"], cwd=tmp_path)
    assert_one_line_error(result, "the following arguments are required: --width, --height, --prompt")

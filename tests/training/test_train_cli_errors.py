"""Bad input to `resadapter-rt train`: exit 2, one line on stderr, no traceback, and nothing created, changed or removed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_harness import assert_bad_input_touches_nothing, assert_one_line_error, run_cli, tree_snapshot
from resadapter_rt.cli import main
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import tiny_pipeline_dir
from toy_data import make_dataset

BASE = ["train", "--model", "tiny-sd15", "--data", "data", "--out", "o", "--min-side", "64", "--steps", "2", "-q"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A one-step run's checkpoint (rank 8, seed 0) and the data it was trained on (beside it, as data/)."""
    root = tmp_path_factory.mktemp("ckpt")
    make_dataset(root / "data", count=2)
    assert main(["train", "--model", "tiny-sd15", "--data", str(root / "data"), "--out", str(root / "run"), "--min-side", "64",
                 "--steps", "1", "--batch-size", "1", "--checkpointing-steps", "1", "-q"]) == 0
    return root / "run" / "checkpoints" / "checkpoint-000001"


def data(count: int = 2, captions: str = "metadata"):
    return lambda root, ckpt: make_dataset(root / "data", count=count, captions=captions)


def data_then(edit):
    def setup(root: Path, ckpt: Path) -> None:
        make_dataset(root / "data", count=2)
        edit(root / "data")
    return setup


def ckpt_data(edit=None):
    def setup(root: Path, ckpt: Path) -> None:
        shutil.copytree(ckpt.parents[2] / "data", root / "data")
        if edit:
            edit(root / "data")
    return setup


def tiny_image(directory: Path) -> None:
    from PIL import Image

    Image.new("RGB", (48, 96)).save(directory / "small.png")
    (directory / "small.txt").write_text("small")


def sample_predicting_model(model: Path) -> None:
    shutil.copytree(tiny_pipeline_dir(SD15), model)
    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "sample"}))


def old_version_state(directory: Path) -> None:
    """A training state as version 1 wrote it (one generator for all randomness; before data parallelism)."""
    import torch

    torch.save({"version": 1, "step": 1, "generator": torch.Generator().get_state()}, directory / "training_state.pt")


def user_dir(root: Path, ckpt: Path) -> None:
    make_dataset(root / "data", count=2)
    (root / "o").mkdir()
    (root / "o" / "thesis.txt").write_text("draft")


RESUME = [*BASE[:-3], "--steps", "3", "-q", "--resume", "CKPT"]

# (id, setup(root, checkpoint), argv, expected text in the single error line)
CASES = [
    ("no-data-dir", None, BASE, "data: no such data directory"),
    ("empty-data", lambda r, c: (r / "data").mkdir(), BASE, "data: no images (.png, .jpg, .jpeg, .webp, .bmp) found"),
    ("no-caption", data(captions="none"), BASE, "img00.png: has no caption; add img00.txt beside it or a line"),
    ("unreadable-image", data_then(lambda d: (d / "img01.png").write_bytes(b"not a png")), BASE,
     "img01.png: not a readable image"),
    ("too-small", data_then(tiny_image), BASE, "small.png: is 48x96, below --min-side 64"),
    ("metadata-json", data_then(lambda d: (d / "metadata.jsonl").write_text("{oops\n")), BASE,
     "metadata.jsonl line 1: not valid JSON"),
    ("metadata-fields", data_then(lambda d: (d / "metadata.jsonl").write_text('{"file": "img00.png"}\n')), BASE,
     "metadata.jsonl line 1: needs string fields 'file_name' and 'text'"),
    ("metadata-missing-file", data_then(lambda d: (d / "metadata.jsonl").write_text('{"file_name": "no.png", "text": "x"}\n')),
     BASE, "metadata.jsonl line 1: no.png is not a file in data"),
    ("txt-captions-ok-but-no-model", data(captions="txt"), [*BASE, "--model", "nowhere"], "nowhere: no such file or directory"),
    ("steps-and-epochs", data(), [*BASE, "--epochs", "2"], "argument --epochs: not allowed with argument --steps"),
    ("zero-steps", data(), [*BASE, "--steps", "0"], "--steps 0 must be a positive integer"),
    ("zero-batch", data(), [*BASE, "--batch-size", "0"], "--batch-size 0 must be a positive integer"),
    ("rank-text", data(), [*BASE, "--rank", "eight"], "argument --rank: invalid int value: 'eight'"),
    ("learning-rate", data(), [*BASE, "--learning-rate", "5"], "--learning-rate 5.0 is not in (0, 1)"),
    ("seed", data(), [*BASE, "--seed", "-1"], "--seed -1 is out of range"),
    ("multiple", data(), [*BASE, "--resolution-multiple", "12"], "--resolution-multiple 12 is not a positive multiple of 8"),
    ("min-side", data(), [*BASE, "--min-side", "100"], "--min-side 100 is not a positive multiple of --resolution-multiple 64"),
    ("min-over-max", data(), [*BASE, "--min-side", "512", "--max-side", "256"], "--min-side 512 is larger than --max-side 256"),
    ("validation-size", data(), [*BASE, "--validation-prompt", "p", "--validation-sizes", "100x100"],
     "--validation-sizes: 100x100 is not made of positive multiples of 8 px"),
    ("validation-size-text", data(), [*BASE, "--validation-prompt", "p", "--validation-sizes", "big"],
     "--validation-sizes: 'big' is not WIDTHxHEIGHT"),
    ("sizes-without-prompt", data(), [*BASE, "--validation-sizes", "64x64"], "--validation-sizes given without --validation-prompt"),
    ("format", data(), [*BASE, "--format", "kohya"], "unknown --format 'kohya'"),
    ("out-user-dir", user_dir, BASE, "o: directory is not empty; training writes a new run directory"),
    ("out-file", lambda r, c: (make_dataset(r / "data", count=2), (r / "o").write_text("x")), BASE,
     "o: exists and is not a directory"),
    ("out-cwd", data(), [*BASE[:-5], "--out", ".", "--min-side", "64", "-q"], ".: is the current directory"),
    ("no-model", data(), [*BASE, "--model", "nowhere"], "nowhere: no such file or directory"),
    ("unet-only-model", data_then(lambda d: shutil.copytree(tiny_pipeline_dir(SD15) / "unet", d.parent / "unet")),
     [*BASE, "--model", "unet"], "unet: training needs a whole pipeline, but this model has no vae, text_encoder, tokenizer"),
    ("sample-prediction", data_then(lambda d: sample_predicting_model(d.parent / "model")), [*BASE, "--model", "model"],
     "model: its scheduler predicts 'sample'; training supports epsilon and v_prediction models"),
    ("resume-not-checkpoint", data(), [*BASE, "--resume", "data"], "--resume data: no training_state.pt here"),
    ("resume-garbage", lambda r, c: (make_dataset(r / "data", count=2), (r / "data" / "training_state.pt").write_text("x")),
     [*BASE, "--resume", "data"], "training_state.pt: not a readable training state"),
    ("resume-old-version", lambda r, c: (make_dataset(r / "data", count=2), old_version_state(r / "data")),
     [*BASE, "--resume", "data"], "training_state.pt: not a training state of this resadapter-rt version (expected version 2); "
     "continue it with the version that wrote it, or start a new run"),
    ("resume-other-rank", ckpt_data(), [*RESUME, "--rank", "4"], "--rank 4 differs from the checkpoint's 8"),
    ("resume-other-accumulation", ckpt_data(), [*RESUME, "--gradient-accumulation-steps", "2"],
     "--gradient-accumulation-steps 2 differs from the checkpoint's 1"),
    ("resume-changed-data", ckpt_data(lambda d: (d / "metadata.jsonl").write_text(
        (d / "metadata.jsonl").read_text().replace("a red", "a pink"))), RESUME,
     "--resume: data is not the data the checkpoint was trained on"),
    ("resume-nothing-left", ckpt_data(), [*RESUME, "--steps", "1"],
     "the checkpoint is at step 1 and this run stops at step 1; pass a larger --steps"),
]


@pytest.mark.parametrize("setup,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_train_input_is_one_line_and_touches_nothing(setup, argv, expected, checkpoint, tmp_path, monkeypatch, capsys):
    root = tmp_path / "work"
    root.mkdir()
    if setup is not None:
        setup(root, checkpoint)
    assert_bad_input_touches_nothing(root, [str(checkpoint) if a == "CKPT" else a for a in argv], expected, monkeypatch, capsys)


def test_subprocess_bad_data_is_one_line(tmp_path):
    """As a user sees it: one line, no traceback, nothing written."""
    (tmp_path / "data").mkdir()
    before = tree_snapshot(tmp_path)
    result = run_cli(BASE, cwd=tmp_path)
    assert_one_line_error(result, "data: no images")
    assert tree_snapshot(tmp_path) == before

"""Data-parallel training on the CPU (gloo), launched as users launch it: ``torchrun --nproc_per_node 2`` gives
the adapter one process gives for the same global batch, every rank holds the same parameters after every
step, rank 0 writes the run directory once, a two-process checkpoint resumes in one process, and a launch
whose world size does not divide the batch is one line from rank 0 under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_harness import REPO, tree_snapshot
from resadapter_rt.cli import main
from run_state import adam_moments, checkpoint_state, relative_difference
from toy_data import make_dataset

WORKER = Path(__file__).with_name("dist_worker.py")
STEPS = 7
# 13 images in 6 bucket sizes, global batch 2: six batches of 2 and, in the 3-image bucket, one of 1 that leaves
# rank 1 nothing (it still joins the gradient sum).
TRAJECTORY = ["--batch-size", "2", "--learning-rate", "1e-3", "--seed", "3", "--min-side", "64"]


def _launch(launcher: list[str], argv: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join(filter(None, [str(REPO), str(WORKER.parent), os.environ.get("PYTHONPATH")]))
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": python_path, "OMP_NUM_THREADS": "1", **(env or {})}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", *launcher, *argv], cwd=cwd, env=environment, capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dist")
    data = make_dataset(root / "data", count=13)
    args = ["train", "--model", "tiny-sd15", "--data", str(data), "--steps", str(STEPS), *TRAJECTORY,
            "--checkpointing-steps", "1", "-q"]
    two = _launch(["torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)],
                  [*args, "--out", str(root / "two")], cwd=root, env={"HASHES_FILE": str(root / "hashes.jsonl")})
    assert two.returncode == 0, two.stderr[-4000:]
    assert main([*args, "--out", str(root / "one")]) == 0
    assert main(["train", "--model", "tiny-sd15", "--data", str(data), "--steps", str(STEPS), "--checkpointing-steps", "1",
                 "-q", "--resume", str(root / "two" / "checkpoints" / "checkpoint-000003"), "--out", str(root / "resumed")]) == 0
    return {"root": root, "two": root / "two", "one": root / "one", "resumed": root / "resumed", "stdout": two.stdout}


def test_two_processes_train_what_one_process_trains(runs):
    for step in (1, 4, STEPS):
        one, two = checkpoint_state(runs["one"], step), checkpoint_state(runs["two"], step)
        errors = (relative_difference(one["trainable"], two["trainable"]), relative_difference(adam_moments(one), adam_moments(two)))
        worst = max((float((one["trainable"][k] - two["trainable"][k]).norm() / one["trainable"][k].norm()), k)
                    for k in one["trainable"])
        print(f"step {step}: trainable {errors[0]:.1e}, AdamW first moment {errors[1]:.1e}; worst tensor {worst[0]:.1e} "
              f"({worst[1]})")
        assert max(errors) <= 1e-5, (step, errors)
    losses = [(a["loss"], b["loss"]) for a, b in zip(checkpoint_state(runs["one"], STEPS)["history"], checkpoint_state(runs["two"], STEPS)["history"])]
    assert len(losses) == STEPS and max(abs(a - b) / a for a, b in losses) <= 1e-5, losses
    records = checkpoint_state(runs["two"], STEPS)["history"]
    assert 1 in [r["batch"] for r in records] and len({(r["width"], r["height"]) for r in records}) == 6


def test_every_rank_holds_the_same_parameters_after_every_step(runs):
    lines = [json.loads(line) for line in (runs["root"] / "hashes.jsonl").read_text().splitlines()]
    assert len(lines) == STEPS
    assert all([rank for rank, _ in line] == [0, 1] and line[0][1] == line[1][1] for line in lines), lines
    assert len({line[0][1] for line in lines}) == STEPS  # and they change every step


def test_rank_zero_writes_the_run_directory_once(runs):
    two, one = runs["two"], runs["one"]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    steps = [json.loads(line) for line in (two / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))  # one line per step, not one per rank
    assert [p.name for p in sorted((two / "checkpoints").iterdir())] == [f"checkpoint-{s:06d}" for s in range(1, STEPS + 1)]
    assert runs["stdout"].count("trained 7 steps") == 1 and checkpoint_state(two, STEPS)["world_size"] == 2


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    resumed, one = checkpoint_state(runs["resumed"], STEPS), checkpoint_state(runs["one"], STEPS)
    assert relative_difference(one["trainable"], resumed["trainable"]) <= 1e-5 and relative_difference(adam_moments(one), adam_moments(resumed)) <= 1e-5


def test_batch_not_divisible_by_the_world_is_one_line_from_rank_zero(tmp_path):
    make_dataset(tmp_path / "data", count=2)
    before = tree_snapshot(tmp_path)
    done = _launch(["accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "resadapter_rt"],
                   ["train", "--model", "tiny-sd15", "--data", "data", "--out", "o", "--min-side", "64", "--steps", "1",
                    "--batch-size", "3", "-q"], cwd=tmp_path)
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and ours == [
        "error: --batch-size 3 is not divisible by the 2 processes of this launch (WORLD_SIZE); each rank takes an equal "
        "slice of the global batch: use --batch-size 4 or launch a number of processes that divides 3"], done.stderr[-3000:]
    assert "exitcode  : 2" in done.stderr  # the launcher's report: our exit status, not a crash
    assert tree_snapshot(tmp_path) == before

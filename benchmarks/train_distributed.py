"""Training at scale on the CPU: 1 vs 2 processes (torchrun, gloo), ``--cache-latents`` off and on, for the tiny and
the full-size SD1.5 layout at 256x256, and the peak memory of a full-size training step with and without
``--gradient-checkpointing``.

Every configuration is a real ``resadapter-rt train`` run in its own subprocess (``python -m resadapter_rt train``
or ``python -m torch.distributed.run --standalone --nproc_per_node 2 -m resadapter_rt train``) on 4 generated
256x256 captioned images with a global batch of 2, so an epoch is 2 steps. Images/s is the global batch over
the median logged step time (data, VAE and text encoding or the cache, UNet forward and backward, gradient
all-reduce, AdamW) of the steps after the first epoch, when the cache is full. Process layouts: 1 process
with torch's default threads (one per core), 1 process with 1 thread, 2 processes with 1 thread each
(torchrun's default); the full-size layout runs the last two.
Peak memory is the run's maximum resident set size (``wait4``), model loading included; the difference
between the two checkpointing runs is the activations the UNet backward keeps.

    python benchmarks/train_distributed.py [--tiny-steps 8] [--full-steps 4] [--skip-full]
        [--out DIR] [--update-results]

Writes ``train_distributed.json`` to a new directory under benchmarks/results/tmp/ (or ``--out DIR``);
``--update-results`` replaces the committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resadapter_rt.bench.results import add_output_arguments, cpu_name, output_dir, write_json

NAME = "train_distributed.json"
SIZE = 256
BATCH = 2


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _dataset(directory: Path) -> Path:
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True)
    for index in range(4):
        image = Image.new("RGB", (SIZE, SIZE), (40 + 50 * index, 90, 160))
        ImageDraw.Draw(image).ellipse((SIZE // 4, SIZE // 4, 3 * SIZE // 4, 3 * SIZE // 4), fill=(230, 200 - 30 * index, 40))
        image.save(directory / f"{index}.png")
        (directory / f"{index}.txt").write_text(f"a yellow circle number {index}")
    return directory


def _run(model: str, data: Path, out: Path, processes: int, threads: int | None, steps: int, extra: list[str]) -> dict:
    """One training run in a subprocess: its logged step times and its peak resident memory."""
    train = ["train", "--model", model, "--data", str(data), "--out", str(out), "--steps", str(steps),
             "--batch-size", str(BATCH), "--checkpointing-steps", "0", "--device", "cpu", "-q", *extra]
    if processes == 1:
        command = [sys.executable, "-m", "resadapter_rt", *train]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                   "-m", "resadapter_rt", *train]
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")}
    if threads is not None:
        environment["OMP_NUM_THREADS"] = str(threads)
    began = time.perf_counter()
    logs = out.parent / f"{out.name}.stdout", out.parent / f"{out.name}.stderr"
    with open(logs[0], "w") as stdout_file, open(logs[1], "w") as stderr_file:
        child = subprocess.Popen(command, env=environment, stdout=stdout_file, stderr=stderr_file)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (ru_maxrss in KiB on Linux)
    stdout, stderr = logs[0].read_text(), logs[1].read_text()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n{stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    seconds = [r["seconds"] for r in records if r["event"] == "step"]
    return {"seconds": seconds, "wall_s": round(time.perf_counter() - began, 1), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "summary": stdout.strip().splitlines()[-1] if stdout.strip() else ""}


def _throughput_rows(model: str, label: str, data: Path, work: Path, steps: int,
                     layouts: list[tuple[int, int | None]]) -> list[dict]:
    rows = []
    for processes, threads in layouts:
        for cache in (False, True):
            name = f"{label}-{processes}p-{threads or 'default'}t-{'cache' if cache else 'nocache'}"
            load = os.getloadavg()[0]
            result = _run(model, data, work / name, processes, threads, steps, ["--cache-latents"] if cache else [])
            measured = result["seconds"][2:]  # after the first epoch (2 steps): the cache is full
            median = statistics.median(measured)
            rows.append({"model": label, "processes": processes, "threads_per_process": threads or torch_threads(),
                         "cache_latents": cache, "width": SIZE, "height": SIZE,
                         "global_batch": BATCH, "steps": steps, "measured_steps": len(measured),
                         "median_step_s": round(median, 4), "images_per_s": round(BATCH / median, 3),
                         "first_epoch_step_s": [round(s, 3) for s in result["seconds"][:2]],
                         "wall_s": result["wall_s"], "load_average_before": round(load, 2),
                         "load_average_after": round(os.getloadavg()[0], 2)})
            print(f"{name}: median step {median:.3f} s -> {BATCH / median:.3f} images/s (wall {result['wall_s']} s)", flush=True)
    base = next(r for r in rows if r["processes"] == 1 and r["threads_per_process"] == 1 and not r["cache_latents"])
    for row in rows:  # ratios side by side, against 1 one-thread process without the cache
        row["speedup_vs_1p_1t_nocache"] = round(row["images_per_s"] / base["images_per_s"], 3)
    return rows


def _memory_rows(model: str, data: Path, work: Path) -> list[dict]:
    rows = []
    for checkpointing in (False, True):
        name = f"memory-{'ckpt' if checkpointing else 'plain'}"
        result = _run(model, data, work / name, 1, 1, 1, ["--gradient-checkpointing"] if checkpointing else [])
        rows.append({"model": "sd15-full-size-layout", "processes": 1, "threads_per_process": 1,
                     "gradient_checkpointing": checkpointing,
                     "width": SIZE, "height": SIZE, "batch": BATCH, "steps": 1, "step_s": result["seconds"][0],
                     "peak_rss_gib": result["peak_rss_gib"], "wall_s": result["wall_s"]})
        print(f"{name}: peak RSS {result['peak_rss_gib']} GiB, step {result['seconds'][0]:.2f} s", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny-steps", type=int, default=8)
    parser.add_argument("--full-steps", type=int, default=4)
    parser.add_argument("--skip-full", action="store_true", help="tiny model only")
    add_output_arguments(parser)
    args = parser.parse_args()
    if args.tiny_steps < 3 or args.full_steps < 3:
        raise SystemExit("--tiny-steps and --full-steps must be at least 3 (the first epoch, 2 steps, is not measured)")
    out = output_dir(args, "train_distributed")  # before the runs: a bad --out is refused at once
    import torch

    report = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch": torch.__version__, "machine": platform.machine(),
              "note": "CPU machine shared with other jobs (see the load averages): compare rows of one run as ratios",
              "rows": [], "memory": []}
    with tempfile.TemporaryDirectory(prefix="train_distributed-work-") as tmp:
        work = Path(tmp)
        data = _dataset(work / "data")
        report["rows"] += _throughput_rows("tiny-sd15", "tiny-sd15", data, work, args.tiny_steps, [(1, None), (1, 1), (2, 1)])
        if not args.skip_full:
            from resadapter_rt.models.families import SD15
            from resadapter_rt.models.tiny import write_full_size_pipeline

            model = work / "sd15-full-size"
            write_full_size_pipeline(SD15, model)
            report["rows"] += _throughput_rows(str(model), "sd15-full-size-layout", data, work, args.full_steps, [(1, 1), (2, 1)])
            report["memory"] = _memory_rows(str(model), data, work)
            shutil.rmtree(model, ignore_errors=True)
    print(f"wrote {write_json(out / NAME, report)}")


if __name__ == "__main__":
    main()

"""`resadapter-rt build` on a full-size SD1.5 pipeline (random weights) with the real resadapter_v2_sd1.5.

Builds the pipeline directory (full-size UNet, CLIP ViT-L text encoder and VAE with random weights, the
tiny model's tokenizer and scheduler), then runs
    resadapter-rt build --model DIR --resadapter ADAPTER --dtype DTYPE --alpha dynamic --profile 256-1024 --out OUT
in a child process (DTYPE fp16 by default), sampling the resident memory of its whole process tree (the export, and the
TensorRT-RTX builder workers) every 0.2 s. Records wall time, peak RSS, export and per-engine build
times and engine sizes in benchmarks/results/build_full_size.json (one entry per dtype; a run past
--timeout is stopped and recorded as such). Needs ~16 GB of RAM and ~15 GB of disk.
python benchmarks/build_full_size.py [--dtype fp16|fp32] [--timeout SECONDS] [--adapter DIR] [--keep DIR]
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from resadapter_rt.bench.memory import TreeMemory
from resadapter_rt.bench.results import add_output_arguments, output_dir, read_runs, write_json
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import write_full_size_pipeline

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default=str(REPO.parent / "shared/resadapter/resadapter_v2_sd1.5"))
    parser.add_argument("--dtype", default="fp16", help="export dtype (default fp16)")
    parser.add_argument("--timeout", type=float, help="stop the build after this many seconds and record that")
    parser.add_argument("--keep", help="build into this directory and keep it (default: a temporary one, removed)")
    add_output_arguments(parser)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="build-full-size-"))
    record: dict = {"dtype": args.dtype, "machine": platform.machine(), "python": platform.python_version(),
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        tick = time.perf_counter()
        write_full_size_pipeline(SD15, work / "model")
        record["make_random_pipeline_seconds"] = round(time.perf_counter() - tick, 1)
        out = Path(args.keep) if args.keep else work / "engines"
        command = [sys.executable, "-m", "resadapter_rt.cli", "build", "--model", str(work / "model"), "--resadapter", args.adapter,
                   "--dtype", args.dtype, "--alpha", "dynamic", "--profile", "256-1024", "--out", str(out)]
        record["command"] = "resadapter-rt " + " ".join(command[3:])
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        memory = TreeMemory(child.pid)
        memory.start()
        try:
            stdout, stderr = child.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            import psutil

            for process in [*psutil.Process(child.pid).children(recursive=True), psutil.Process(child.pid)]:
                process.kill()
            stdout, stderr = child.communicate()
            record["stopped_after_timeout_seconds"] = args.timeout
        memory.done.set()
        memory.join()
        record.update(exit_status=child.returncode, wall_seconds=round(time.perf_counter() - start, 1),
                      peak_tree_rss_gib=round(memory.peak / 2**30, 2), stdout=stdout.strip(),
                      progress=[line for line in stderr.splitlines() if line.startswith(("[export]", "[build]", "error:"))])
        if child.returncode == 0:
            engines = json.loads((out / "manifest.json").read_text())
            export = json.loads((out / "onnx/manifest.json").read_text())
            record["runtime"] = engines["runtime"]
            record["compute_capabilities"] = engines["compute_capabilities"]
            record["profiles"] = [p["spec"] for p in engines["profiles"]]
            record["export_seconds"] = export["export_seconds"]
            record["components"] = {
                name: {"precision": c["precision"], "engine_bytes": c["size_bytes"], "build_seconds": c["build_seconds"],
                       "onnx_bytes": sum(p.stat().st_size for p in (out / c["onnx"]).parent.iterdir()),
                       "onnx_export_seconds": export["components"][name]["export_seconds"],
                       "worst_relative_error": max(r["relative_error"] for r in export["components"][name]["validation"])}
                for name, c in engines["components"].items()}
        else:
            record["stderr_tail"] = stderr[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    path = output_dir(args, "build_full_size") / "build_full_size.json"
    runs = [run for run in read_runs(path) if run.get("dtype") != args.dtype] + [record]
    write_json(path, {"benchmark": "build_full_size_sd15", "runs": runs})
    print(json.dumps({k: v for k, v in record.items() if k not in ("progress", "stderr_tail")}, indent=2))
    print(f"wrote {path}")
    return record["exit_status"]


if __name__ == "__main__":
    sys.exit(main())

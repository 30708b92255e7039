"""Export the full-size SD1.5-architecture UNet (random weights) merged with the real resadapter_v2_sd1.5.

Measures wall time and peak RSS of `resadapter-rt export` in a child process and writes
benchmarks/results/export_full_size.json. Run: python benchmarks/export_full_size.py [--alpha dynamic]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--adapter", default=str(REPO.parent / "shared/resadapter/resadapter_v2_sd1.5"))
    parser.add_argument("--alpha", action="append", default=None, help="repeatable; default: 1.0 and dynamic")
    args = parser.parse_args()
    from diffusers import UNet2DConditionModel

    from resadapter_rt.models.families import SD15
    from resadapter_rt.models.tiny import full_size_unet_config

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        UNet2DConditionModel(**full_size_unet_config(SD15)).save_pretrained(Path(tmp) / "unet")
        for alpha in args.alpha or ["1.0", "dynamic"]:
            out = Path(tmp) / f"export-{alpha}"
            start = time.perf_counter()
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            subprocess.run([sys.executable, "-m", "resadapter_rt.cli", "export", "--model", str(Path(tmp) / "unet"),
                            "--resadapter", args.adapter, "--alpha", alpha, "--out", str(out)], check=True)
            wall = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            manifest = json.loads((out / "manifest.json").read_text())
            unet = manifest["components"]["unet"]
            size = sum(p.stat().st_size for p in (out / "unet").iterdir())
            results.append({
                "alpha": alpha, "wall_seconds": round(wall, 1), "peak_rss_gib": round(max(peak, before) / 2**20, 2),
                "unet_export_seconds": unet["export_seconds"], "onnx_bytes": size, "external_data": unet["external_data"],
                "validation": unet["validation"], "group_norm": unet["group_norm"],
            })
            print(json.dumps(results[-1]), flush=True)
    record = {"benchmark": "export_full_size_sd15_unet", "machine": platform.machine(), "cpus": torch.get_num_threads(),
              "python": platform.python_version(), "torch": torch.__version__, "results": results,
              "note": "peak RSS is the max over child processes so far (ru_maxrss of RUSAGE_CHILDREN)"}
    path = REPO / "benchmarks/results/export_full_size.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

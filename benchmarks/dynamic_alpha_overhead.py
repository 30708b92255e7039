"""Dynamic-alpha overhead: the same UNet exported baked vs dynamic, timed interleaved in ONNX Runtime (CPU).

python benchmarks/dynamic_alpha_overhead.py [--model tiny-sd15 --resadapter tiny-sd15] [--size 512x512]
    [--batch 2] [--repeats 15]
Writes benchmarks/results/dynamic_alpha_overhead_<model>.json with median/p90 and the ratio.
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models import load_components
from resadapter_rt.export.unet import unet_spec

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-sd15")
    parser.add_argument("--resadapter", default="tiny-sd15")
    parser.add_argument("--size", action="append", help="WxH pixels (repeatable); default 256x256 512x512 1000x600")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    add_output_arguments(parser)
    args = parser.parse_args()
    sizes = [tuple(map(int, s.split("x"))) for s in (args.size or ["256x256", "512x512", "1000x600"])]
    unet = load_components(args.model, unet_only=True).unet
    sdxl = unet.config.addition_embed_type == "text_time"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for mode, alpha in (("baked", 1.0), ("dynamic", "dynamic")):
            out = Path(tmp) / mode
            export_pipeline(ExportOptions(model=args.model, resadapter=args.resadapter, alpha=alpha,
                                          validation_sizes=((328, 200, 1),)), out, progress=lambda m: None)
            sessions[mode] = ort.InferenceSession(str(out / "unet" / "model.onnx"), providers=["CPUExecutionProvider"])
        for width, height in sizes:
            feeds = {}
            for mode in sessions:
                spec = unet_spec(unet, sdxl, dynamic_alpha=(mode == "dynamic"))
                feeds[mode] = {k: v.numpy() for k, v in spec.example(args.batch, height // 8, width // 8).items()}
            times = {mode: [] for mode in sessions}
            for mode in sessions:  # warm-up
                sessions[mode].run(None, feeds[mode])
            for _ in range(args.repeats):  # interleaved, so drift hits both equally
                for mode in sessions:
                    start = time.perf_counter()
                    sessions[mode].run(None, feeds[mode])
                    times[mode].append(time.perf_counter() - start)
            summary = {mode: {"median_ms": 1e3 * statistics.median(t), "p90_ms": 1e3 * float(np.percentile(t, 90))}
                       for mode, t in times.items()}
            ratio = summary["dynamic"]["median_ms"] / summary["baked"]["median_ms"]
            rows.append({"width": width, "height": height, "batch": args.batch, **summary, "dynamic_over_baked": ratio})
            print(f"{width}x{height} b{args.batch}: baked {summary['baked']['median_ms']:.1f} ms, "
                  f"dynamic {summary['dynamic']['median_ms']:.1f} ms, ratio {ratio:.3f}", flush=True)
    name = Path(args.model).name
    record = {"benchmark": "dynamic_alpha_overhead", "model": args.model, "resadapter": args.resadapter,
              "backend": "onnxruntime CPUExecutionProvider", "onnxruntime": ort.__version__, "torch": torch.__version__,
              "machine": platform.machine(), "threads": torch.get_num_threads(), "repeats": args.repeats, "results": rows}
    path = write_json(output_dir(args, "dynamic_alpha_overhead") / f"dynamic_alpha_overhead_{name}.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

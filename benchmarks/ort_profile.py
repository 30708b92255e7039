"""Where ONNX Runtime's CPU time goes in one UNet step: per-operator-type share from ORT's profiler.

python benchmarks/ort_profile.py --model <UNet or pipeline dir> --resadapter <adapter> [--size 256x256] [--batch 2]
Writes benchmarks/results/ort_profile_<model>.json.
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import onnxruntime as ort

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.export.exporter import ExportOptions, export_pipeline, read_manifest
from resadapter_rt.export.unet import unet_spec
from resadapter_rt.runtime.runners import torch_runners

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="tiny-sd15")
    parser.add_argument("--resadapter", default="tiny-sd15")
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--batch", type=int, default=2)
    add_output_arguments(parser)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        export_pipeline(ExportOptions(model=args.model, resadapter=args.resadapter, validation_sizes=((328, 200, 1),)), out,
                        progress=lambda m: None)
        manifest = read_manifest(out)
        unet = torch_runners(manifest, out, fused_group_norm=False)[0]["unet"].module.unet
        inputs = unet_spec(unet, manifest["family"] == "sdxl", False).example(args.batch, height // 8, width // 8)
        feed = {k: v.numpy() for k, v in inputs.items()}
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort_profile")
        session = ort.InferenceSession(str(out / "unet" / "model.onnx"), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)  # warm-up
        session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    last_run = runs[len(runs) // 2:]  # the second (warm) run
    by_type: collections.Counter = collections.Counter()
    for event in last_run:
        by_type[event["args"]["op_name"]] += event["dur"]
    total = sum(by_type.values())
    shares = [{"op_type": op, "ms": round(us / 1e3, 1), "share": round(us / total, 3)} for op, us in by_type.most_common(12)]
    for row in shares:
        print(f"{row['op_type']:>24} {row['ms']:9.1f} ms  {100 * row['share']:5.1f}%")
    record = {"benchmark": "ort_profile", "model": args.model, "size": args.size, "batch": args.batch,
              "total_kernel_ms": round(total / 1e3, 1), "by_op_type": shares, "onnxruntime": ort.__version__}
    path = write_json(output_dir(args, "ort_profile") / f"ort_profile_{Path(args.model).name}.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

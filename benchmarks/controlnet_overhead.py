"""ControlNet overhead: one UNet step with 0, 1 and 2 ControlNets folded into the graph, timed interleaved (ORT CPU).

python benchmarks/controlnet_overhead.py [--size 512x512 ...] [--batch 2] [--repeats 15]
Tiny SD1.5 (built in) and tiny ControlNets from ``ControlNetModel.from_unet``; a ControlNet is a copy
of the UNet's down half plus its conditioning embedding, so the ratio is what the architecture costs.
Writes benchmarks/results/controlnet_overhead_tiny-sd15.json with median/p90 per variant and the ratios.
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
from resadapter_rt.export.unet import unet_spec
from resadapter_rt.models import load_components
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import tiny_controlnet

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", action="append", help="WxH pixels (repeatable); default 256x256 512x512 1000x600")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2: one image with classifier-free guidance)")
    parser.add_argument("--repeats", type=int, default=15)
    add_output_arguments(parser)
    args = parser.parse_args()
    sizes = [tuple(map(int, s.split("x"))) for s in (args.size or ["256x256", "512x512", "1000x600"])]
    unet = load_components("tiny-sd15", unet_only=True).unet
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        nets = []
        for seed in (1, 2):
            tiny_controlnet(SD15, seed).save_pretrained(Path(tmp) / f"cn{seed}")
            nets.append(str(Path(tmp) / f"cn{seed}"))
        sessions, specs = {}, {}
        for count in (0, 1, 2):
            out = Path(tmp) / f"export{count}"
            export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=1.0, controlnets=tuple(nets[:count]),
                                          validation_sizes=((328, 200, 1),)), out, progress=lambda m: None)
            options = ort.SessionOptions()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            sessions[count] = ort.InferenceSession(str(out / "unet" / "model.onnx"), options, providers=["CPUExecutionProvider"])
            specs[count] = unet_spec(unet, False, False, controlnets=count)
        for width, height in sizes:
            feeds = {c: {k: v.numpy() for k, v in specs[c].example(args.batch, height // 8, width // 8).items()} for c in sessions}
            times = {c: [] for c in sessions}
            for count in sessions:  # warm-up
                sessions[count].run(None, feeds[count])
            for _ in range(args.repeats):  # interleaved, so drift hits every variant equally
                for count in sessions:
                    start = time.perf_counter()
                    sessions[count].run(None, feeds[count])
                    times[count].append(time.perf_counter() - start)
            summary = {f"controlnets_{c}": {"median_ms": 1e3 * statistics.median(t), "p90_ms": 1e3 * float(np.percentile(t, 90))}
                       for c, t in times.items()}
            base = summary["controlnets_0"]["median_ms"]
            ratios = {f"ratio_{c}_over_0": summary[f"controlnets_{c}"]["median_ms"] / base for c in (1, 2)}
            rows.append({"width": width, "height": height, "batch": args.batch, **summary, **ratios})
            print(f"{width}x{height} b{args.batch}: plain {base:.1f} ms, +1 ControlNet x{ratios['ratio_1_over_0']:.2f}, "
                  f"+2 ControlNets x{ratios['ratio_2_over_0']:.2f}", flush=True)
    record = {"benchmark": "controlnet_overhead", "model": "tiny-sd15", "controlnets": "tiny (ControlNetModel.from_unet)",
              "backend": "onnxruntime CPUExecutionProvider", "onnxruntime": ort.__version__, "torch": torch.__version__,
              "machine": platform.machine(), "threads": torch.get_num_threads(), "repeats": args.repeats, "results": rows}
    path = write_json(output_dir(args, "controlnet_overhead") / "controlnet_overhead_tiny-sd15.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Tiled generation beyond the export's range: time per step and peak memory of 2048x2048 and 4096x1024 in
512 px MultiDiffusion windows (stride 384) against a plain 1024x1024 run and a plain 512x512 run (one window's cost),
tiny SD1.5 on ONNX Runtime CPU (the export covers 128-1024 px per side).

python benchmarks/tiled_generation.py [--steps 3] [--export DIR]
Each case runs in its own process (peak resident memory of that process tree, sampled every 0.2 s); the cases run
one after another on the same machine. The ratio ``step / (windows x window step)`` says how close a tiled step is
to the number of windows times one window's cost (the 512x512 step). Writes tiled_generation_tiny-sd15.json to a new
directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the committed file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

CASES = [  # name, width, height, tile options
    ("plain_512", 512, 512, {}),
    ("plain_1024", 1024, 1024, {}),
    ("tiled_2048x2048", 2048, 2048, {"tile_size": 512, "tile_stride": 384}),
    ("tiled_4096x1024", 4096, 1024, {"tile_size": 512, "tile_stride": 384}),
]


def child(args: argparse.Namespace) -> None:
    """One generation; prints its timings as JSON (``--child``)."""
    from resadapter_rt.pipeline import ResAdapterPipeline

    pipe = ResAdapterPipeline.from_artifacts(args.export)
    options = json.loads(args.options)
    print("phase: generate", file=sys.stderr, flush=True)
    out = pipe("a wide landscape", width=args.width, height=args.height, num_inference_steps=args.steps, seed=0,
               scheduler="ddim", **options)
    t = out.timings
    print(json.dumps({"unet_step_ms": [1e3 * s for s in t.unet_steps], "decode_ms": 1e3 * t.decode, "total_s": t.total,
                      "windows": out.parameters.get("tiles", 1), "alpha": out.alpha, "size": list(out.images[0].size)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--export", help="a tiny-sd15 export (dynamic alpha) to reuse (default: export one to a temporary directory)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--options", default="{}", help=argparse.SUPPRESS)
    from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json

    add_output_arguments(parser)
    args = parser.parse_args()
    if args.child:
        return child(args)
    from resadapter_rt.bench.memory import run_measured
    from resadapter_rt.bench.suite import machine_record
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        export = Path(args.export) if args.export else Path(tmp) / "export"
        if not args.export:
            print("exporting tiny-sd15 (dynamic alpha) ...", flush=True)
            export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic",
                                          validation_sizes=((328, 200, 1),)), export, progress=lambda m: None)
        rows = []
        for name, width, height, options in CASES:
            command = [sys.executable, __file__, "--child", "--export", str(export), "--width", str(width), "--height",
                       str(height), "--steps", str(args.steps), "--options", json.dumps(options)]
            run = run_measured(command, lambda line: "generate" if line.startswith("phase: generate") else None)
            if run["exit_status"] != 0:
                raise SystemExit(f"{name} failed:\n{run['stderr'][-2000:]}")
            result = json.loads(run["stdout"].strip().splitlines()[-1])
            steps = result.pop("unet_step_ms")
            rows.append({"case": name, "width": width, "height": height, **options, **result,
                         "unet_step_median_ms": statistics.median(steps), "unet_step_ms": steps,
                         "peak_rss_gib": run["peak_tree_rss_gib"], "generate_peak_rss_gib":
                         next((p["peak_rss_gib"] for p in run["phases"] if p["phase"] == "generate"), None)})
            print(f"{name}: {result['windows']} window(s), UNet step {rows[-1]['unet_step_median_ms']:.0f} ms (median of "
                  f"{len(steps)}), decode {result['decode_ms']:.0f} ms, peak RSS {run['peak_tree_rss_gib']:.2f} GiB", flush=True)
    by_name = {row["case"]: row for row in rows}
    window = by_name["plain_512"]["unet_step_median_ms"]
    for row in rows:
        row["ratio_step_over_plain_1024"] = row["unet_step_median_ms"] / by_name["plain_1024"]["unet_step_median_ms"]
        row["ratio_step_over_windows_x_window_step"] = row["unet_step_median_ms"] / (row["windows"] * window)
        row["ratio_peak_rss_over_plain_1024"] = row["peak_rss_gib"] / by_name["plain_1024"]["peak_rss_gib"]
    record = {"benchmark": "tiled_generation", "model": "tiny-sd15", "backend": "onnxruntime CPUExecutionProvider",
              "export_range_px": [128, 1024], "scheduler": "ddim", "guidance_scale": 7.0, "steps": args.steps,
              "windows_per_unet_call": 8, "load_average_1_5_15_min_at_end": list(os.getloadavg()), **machine_record(),
              "results": rows}
    path = write_json(output_dir(args, "tiled_generation") / "tiled_generation_tiny-sd15.json", record)
    for row in rows:
        print(f"{row['case']}: step x{row['ratio_step_over_plain_1024']:.2f} of plain 1024, "
              f"x{row['ratio_step_over_windows_x_window_step']:.2f} of windows x 512 step, "
              f"peak RSS x{row['ratio_peak_rss_over_plain_1024']:.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

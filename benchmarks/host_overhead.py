"""Host overhead per denoising step: everything in the loop except the UNet call.

The UNet runner is replaced by a stub that returns a preallocated tensor, so what is timed is
the scheduler step, CFG split/combine, concatenation, timestep casts and the loop itself.
python benchmarks/host_overhead.py [--artifacts DIR] -> benchmarks/results/host_overhead.json
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.schedulers import SCHEDULERS

REPO = Path(__file__).resolve().parents[1]


class StubUNet:
    def __init__(self, input_names):
        self.input_names = input_names
        self.out = None

    def __call__(self, **inputs):
        if self.out is None or self.out.shape != inputs["sample"].shape:
            self.out = torch.randn_like(inputs["sample"]) * 0.1
        return {"out_sample": self.out}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--artifacts")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    add_output_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(args.artifacts or Path(tmp) / "export")
        if not args.artifacts:
            export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic",
                                          validation_sizes=((328, 200, 1),)), artifacts, progress=lambda m: None)
        pipe = ResAdapterPipeline.from_artifacts(artifacts)
        pipe.runners["unet"] = StubUNet(pipe.unet_inputs)
        rows = []
        for scheduler in SCHEDULERS:
            for width, height in ((512, 512), (1000, 600)):
                per_step = []
                for repeat in range(args.repeats + 1):
                    out = pipe("a cat", height=height, width=width, num_inference_steps=args.steps, guidance_scale=7.0,
                               seed=repeat, scheduler=scheduler, output_type="latent")
                    if repeat:  # the first call warms up
                        per_step.append(out.timings.host_overhead_per_step_ms)
                row = {"scheduler": scheduler, "width": width, "height": height, "batch": 2,
                       "host_ms_per_step_median": statistics.median(per_step), "host_ms_per_step_max": max(per_step)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    record = {"benchmark": "host_overhead", "machine": platform.machine(), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "steps": args.steps, "repeats": args.repeats, "results": rows}
    path = write_json(output_dir(args, "host_overhead") / "host_overhead.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Interop check: optimum's ONNX Runtime pipelines load our exports as they are and draw the same image.

Builds (once) a separate virtual environment with optimum-onnx and its own transformers 4.x,
exports the tiny SD1.5 and SDXL models with a baked alpha here, generates with ``resadapter-rt``'s
runtime, generates again inside that environment with ``optimum.onnxruntime.ORTDiffusionPipeline``
(same scheduler, seed, size, steps), and compares the images (max abs on [0, 1] pixels, limit 0.02).
Results go to ``results/interop_optimum.json``.

    python benchmarks/interop_optimum.py [--venv DIR]
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.pipeline import ResAdapterPipeline
from resadapter_rt.runtime.schedulers import SCHEDULERS

HERE = Path(__file__).resolve().parent
DEFAULT_VENV = HERE / "results" / "tmp" / "optimum-venv"
PACKAGES = ["torch==2.13.0", "optimum-onnx[onnxruntime]==0.1.0", "diffusers", "pillow"]
LIMIT = 0.02
CASES = (("sd15", 328, 200), ("sdxl", 384, 264))
SCHEDULER, STEPS, SEED, GUIDANCE, PROMPT = "dpm++2m-karras", 6, 7, 6.0, "a lighthouse at dawn"

# Runs inside the optimum environment: load the export, set our scheduler, draw the image as float pixels.
CHILD = r"""
import json, sys
import numpy as np, torch, diffusers, transformers, optimum.onnxruntime as ort_pipelines
args = json.loads(sys.argv[1])
pipe = ort_pipelines.ORTDiffusionPipeline.from_pretrained(args["export"], provider="CPUExecutionProvider")
class_name, overrides = args["scheduler"]
pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)
image = pipe(args["prompt"], height=args["height"], width=args["width"], num_inference_steps=args["steps"],
             guidance_scale=args["guidance"], generator=torch.Generator().manual_seed(args["seed"]), output_type="np").images[0]
np.save(args["out"], image.astype(np.float32))
print(json.dumps({"pipeline": type(pipe).__name__, "transformers": transformers.__version__, "diffusers": diffusers.__version__}))
"""


def ensure_venv(venv: Path) -> Path:
    """The optimum environment's python, created and installed on first use."""
    python = venv / "bin" / "python"
    if not python.is_file():
        print(f"creating {venv} with {' '.join(PACKAGES)} (minutes) ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="where the optimum environment lives")
    add_output_arguments(parser)
    args = parser.parse_args()
    python = ensure_venv(args.venv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family, width, height in CASES:
            export = Path(tmp) / family
            export_pipeline(ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}", alpha=0.8), export,
                            progress=lambda m: None)
            ours = ResAdapterPipeline.from_artifacts(export)(PROMPT, height=height, width=width, num_inference_steps=STEPS,
                                                             guidance_scale=GUIDANCE, seed=SEED, scheduler=SCHEDULER)
            ours_pixels = np.asarray(ours.images[0], dtype=np.float32) / 255
            request = {"export": str(export), "scheduler": SCHEDULERS[SCHEDULER], "prompt": PROMPT, "height": height,
                       "width": width, "steps": STEPS, "guidance": GUIDANCE, "seed": SEED, "out": str(Path(tmp) / f"{family}.npy")}
            done = subprocess.run([str(python), "-c", CHILD, json.dumps(request)], capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"family": family, "loaded": False, "error": done.stderr.strip().splitlines()[-1]})
                continue
            theirs = np.load(request["out"])
            max_abs = float(np.abs(theirs - ours_pixels).max())  # ours is 8-bit: up to 0.5/255 from rounding alone
            rows.append({"family": family, "loaded": True, **json.loads(done.stdout.strip().splitlines()[-1]),
                         "size": f"{width}x{height}", "scheduler": SCHEDULER, "steps": STEPS, "seed": SEED,
                         "max_abs_pixel_difference": max_abs, "limit": LIMIT, "ok": max_abs <= LIMIT})
    path = write_json(output_dir(args, "interop_optimum") / "interop_optimum.json", {"optimum_packages": PACKAGES, "cases": rows})
    print(f"wrote {path}")
    for row in rows:
        print(json.dumps(row))
    sys.exit(0 if all(row.get("ok") for row in rows) else 1)


if __name__ == "__main__":
    main()

"""Peak memory and wall time of `resadapter-rt export` on full-size SD1.5 / SDXL models (random weights).

Builds a full-size random-weight model (a UNet directory with --unet-only, else a whole pipeline: UNet,
CLIP text encoder(s), VAE), then runs, in a child process,
    resadapter-rt export --model DIR --resadapter ADAPTER --alpha ALPHA --dtype DTYPE [--validation-sizes S] --out OUT
sampling the RSS of its process tree every 0.2 s; the peak is attributed to the phase its progress lines
announce (load, each component's export and validation). Results are merged into
benchmarks/results/export_full_size.json, one entry per (family, parts, dtype, alpha, label).

python benchmarks/export_full_size.py --family sd15 --unet-only --dtype fp32 --alpha 1.0
python benchmarks/export_full_size.py --family sdxl --dtype fp16 --validation-sizes 328x200x2,1000x600
Needs disk for the model and export (SDXL: ~14 GB + ~7 GB).
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from resadapter_rt.bench.memory import run_measured
from resadapter_rt.bench.results import add_output_arguments, output_dir, read_runs, write_json
from resadapter_rt.models.families import SD15, SDXL
from resadapter_rt.models.tiny import full_size_unet_config, write_full_size_pipeline

REPO = Path(__file__).resolve().parents[1]
PHASE = re.compile(r"^\[export\] (\S+): (computing|tracing|validating)")


def phase_of(line: str) -> str | None:
    """'[export] unet: tracing ...' -> 'unet: export' (also 'reference' and 'validation'); before any: 'start' (load, merge)."""
    match = PHASE.match(line)
    if match:
        return f"{match[1]}: {dict(computing='reference', tracing='export', validating='validation')[match[2]]}"
    return None


def make_model(family, unet_only: bool, directory: Path) -> None:
    import torch
    from diffusers import UNet2DConditionModel

    if unet_only:
        torch.manual_seed(0)
        UNet2DConditionModel(**full_size_unet_config(family)).save_pretrained(directory)
    else:
        write_full_size_pipeline(family, directory)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", choices=("sd15", "sdxl"), default="sd15")
    parser.add_argument("--unet-only", action="store_true", help="export a UNet directory (default: a whole pipeline)")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--alpha", default="1.0", help="a number or 'dynamic'")
    parser.add_argument("--validation-sizes", help="passed to export (default: the exporter's)")
    parser.add_argument("--adapter", help="default: ../shared/resadapter/resadapter_v2_<family>")
    parser.add_argument("--label", default="", help="tag for this run (e.g. 'before' / 'after')")
    parser.add_argument("--timeout", type=float, help="stop the export after this many seconds and record that")
    add_output_arguments(parser)
    args = parser.parse_args()
    family = SD15 if args.family == "sd15" else SDXL
    adapter = args.adapter or str(REPO.parent / f"shared/resadapter/resadapter_v2_{'sd1.5' if family is SD15 else 'sdxl'}")
    work = Path(tempfile.mkdtemp(prefix="export-full-size-"))
    try:
        tick = time.perf_counter()
        make_model(family, args.unet_only, work / "model")
        model_bytes = sum(p.stat().st_size for p in (work / "model").rglob("*.safetensors"))
        made = time.perf_counter() - tick
        command = [sys.executable, "-m", "resadapter_rt.cli", "export", "--model", str(work / "model"), "--resadapter", adapter,
                   "--alpha", args.alpha, "--dtype", args.dtype, "--out", str(work / "export")]
        if args.validation_sizes:
            command += ["--validation-sizes", args.validation_sizes]
        result = run_measured(command, phase_of, timeout=args.timeout)
        record = {
            "family": args.family, "parts": "unet" if args.unet_only else "pipeline", "dtype": args.dtype, "alpha": args.alpha,
            "label": args.label, "command": "resadapter-rt " + " ".join(command[3:]).replace(str(work), "$WORK"),
            "model_weights_gib": round(model_bytes / 2**30, 2), "make_model_seconds": round(made, 1),
            **{k: v for k, v in result.items() if k not in ("stdout", "stderr")},
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.machine(),
        }
        record["peak_over_weights"] = round(record["peak_tree_rss_gib"] / record["model_weights_gib"], 2)
        if result["exit_status"] == 0:
            manifest = json.loads((work / "export/manifest.json").read_text())
            record["export_seconds"] = manifest["export_seconds"]
            record["components"] = {
                name: {"dtype": c["dtype"], "export_seconds": c["export_seconds"],
                       "onnx_bytes": sum(p.stat().st_size for p in (work / "export" / name).iterdir()),
                       "validated_sizes": len(c["validation"]),
                       "worst_relative_error": max(r["relative_error"] for r in c["validation"])}
                for name, c in manifest["components"].items()}
        else:
            record["stderr_tail"] = result["stderr"][-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = output_dir(args, "export_full_size") / "export_full_size.json"
    runs = read_runs(results)
    key = ("family", "parts", "dtype", "alpha", "label")
    runs = [r for r in runs if tuple(r.get(k) for k in key) != tuple(record[k] for k in key)] + [record]
    write_json(results, {"benchmark": "export_full_size", "runs": runs})
    print(json.dumps({k: v for k, v in record.items() if k != "stderr_tail"}, indent=2))
    print(f"wrote {results}")
    return record["exit_status"]


if __name__ == "__main__":
    sys.exit(main())

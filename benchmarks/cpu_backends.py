"""CPU backends side by side: torch, onnxruntime, openvino fp32, openvino bf16 (UNet step and end to end).

    python benchmarks/cpu_backends.py --full-size DIR [--sizes 256x256,512x512] [--batch 2] [--repeats 2] [--e2e-steps 4]
    python benchmarks/cpu_backends.py --tiny [--sizes ...] [--out DIR | --update-results]

--full-size DIR: the full-size SD1.5 pipeline (random weights, benchmarks/build_full_size.py) exported with the real
resadapter_v2_sd1.5 and dynamic alpha into DIR/export (made once if missing: ~15 GiB RAM, minutes) and reused.
Writes cpu_backends_<label>.json and .md (see resadapter_rt/bench/cpu_backends.py) into a new directory under
benchmarks/results/tmp/ (or --out DIR; --update-results replaces the committed ones). On a CPU without native bf16
openvino-bf16 is left out with a one-line "not measurable here: <reason>", also recorded in the JSON.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json, write_text

REPO = Path(__file__).resolve().parents[1]
ADAPTER = REPO.parent / "shared/resadapter/resadapter_v2_sd1.5"


def full_size_export(directory: Path) -> Path:
    """DIR/export: the full-size random-weight SD1.5 pipeline with resadapter_v2_sd1.5, dynamic alpha (made if missing)."""
    export = directory / "export"
    if not (export / "manifest.json").is_file():
        sys.path.insert(0, str(Path(__file__).parent))
        from build_full_size import full_size_pipeline

        if not (directory / "model").is_dir():
            full_size_pipeline(directory / "model")
        subprocess.run([sys.executable, "-m", "resadapter_rt.cli", "export", "--model", str(directory / "model"),
                        "--resadapter", str(ADAPTER), "--alpha", "dynamic", "--out", str(export)], check=True)
    return export


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--full-size", metavar="DIR", help="where the full-size export is kept (made if missing)")
    source.add_argument("--tiny", action="store_true", help="the tiny SD1.5 model: a smoke run (minutes with torch's 20-step "
                        "end to end on 2 loaded cores; ratios unlike full size)")
    parser.add_argument("--sizes", default="256x256,512x512")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--e2e-steps", type=int, default=4)
    parser.add_argument("--e2e-repeats", type=int, default=1)
    parser.add_argument("--backends", default=",".join(("torch", "onnxruntime", "openvino-fp32", "openvino-bf16")))
    parser.add_argument("--unet-only", action="store_true", help="only the UNets (no torch, no end to end): less memory")
    add_output_arguments(parser)
    args = parser.parse_args()
    from resadapter_rt.bench.cpu_backends import markdown, measurable_backends, run_cpu_backends
    from resadapter_rt.runtime.openvino_runners import bf16_unavailable

    label = "tiny-sd15" if args.tiny else "sd15-full-size"
    out = output_dir(args, "cpu_backends") / f"cpu_backends_{label}{'_unet' if args.unet_only else ''}.json"
    command = "python benchmarks/cpu_backends.py " + " ".join(sys.argv[1:])
    backends, skipped = measurable_backends(args.backends.split(","), bf16_unavailable())
    if not backends:
        write_json(out, {"benchmark": "cpu_backends", "label": label, "not_measured": skipped, "command": command})
        for name, line in skipped.items():
            print(f"[cpu-backends] {name}: {line} (recorded in {out})")
        return 0
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from resadapter_rt.export.exporter import ExportOptions, export_pipeline

            export = Path(tmp) / "tiny"
            export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic"), export, progress=lambda m: None)
        else:
            export = full_size_export(Path(args.full_size))
        record = run_cpu_backends(export, sizes, args.batch, args.repeats, args.e2e_steps, args.e2e_repeats,
                                  tuple(args.backends.split(",")), args.unet_only)
    record |= {"label": label, "command": command}
    write_json(out, record)
    write_text(out.with_suffix(".md"), markdown(record) + "\n")
    print(markdown(record))
    print(f"wrote {out} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export parity of the tiny built-in models, per component, as the manifests record it.

Exports tiny SD1.5 and SDXL (baked alpha 1.0 and dynamic alpha, fp32 and fp16) and writes the worst
ONNX Runtime vs PyTorch relative error per component to ``results/export_parity_tiny.json``, so the
README quotes numbers a manifest can confirm.

    python benchmarks/export_parity_tiny.py
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.export.exporter import ExportOptions, export_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("sd15", "sdxl"):
            for alpha in ("1.0", "dynamic"):
                for dtype in ("fp32", "fp16"):
                    out = Path(tmp) / f"{family}-{alpha}-{dtype}"
                    manifest = export_pipeline(ExportOptions(model=f"tiny-{family}", resadapter=f"tiny-{family}",
                                                             alpha=alpha, dtype=dtype), out, progress=lambda m: None)
                    for name, component in manifest["components"].items():
                        rows.append({"family": family, "alpha": alpha, "dtype": dtype, "component": name,
                                     "component_dtype": component["dtype"],
                                     "validation_sizes": len(component["validation"]),
                                     "worst_relative_error": max(r["relative_error"] for r in component["validation"])})
    summary = {}
    for row in rows:
        key = f"{row['component']} ({row['component_dtype']})"
        summary[key] = max(summary.get(key, 0.0), row["worst_relative_error"])
    path = write_json(output_dir(args, "export_parity_tiny") / "export_parity_tiny.json", {"rows": rows, "worst_by_component": summary})
    for key, value in sorted(summary.items()):
        print(f"{key:28s} worst relative error {value:.1e}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

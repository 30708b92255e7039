"""Quality guard for the openvino backend's bf16: images bf16 vs fp32 at 20 steps, per component.

    python benchmarks/cpu_bf16_quality.py --tiny [--size 512x512] [--seeds 0,1] [--out DIR | --update-results]
    python benchmarks/cpu_bf16_quality.py --full-size DIR [--size 256x256] [--seeds 0] [--out DIR | --update-results]

Runs the same prompt/seed through the openvino backend with every component in fp32 (the reference),
with all of them in bf16, and with one component at a time in bf16 (the others fp32), and reports
PSNR and max abs difference of the decoded images on [0, 1] pixels (before 8-bit rounding) and of
the final latents. --full-size DIR is the export benchmarks/cpu_backends.py makes (DIR/export).
Writes cpu_bf16_quality_<label>.json into a new directory under benchmarks/results/tmp/ (or --out DIR;
--update-results replaces the committed one). On a CPU without native bf16 (the check ``generate``
applies to --cpu-precision bf16) there is nothing to compare: it says so in one line, records
"not measurable here: <reason>" and exits 0 before exporting anything.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from resadapter_rt.bench.results import add_output_arguments, not_measurable, output_dir, write_json

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parents[1]
PROMPT = "a photo of a red fox in the snow, detailed fur"


def psnr(a, b) -> float:
    """PSNR in dB of two images on [0, 1]; identical images mean bf16 never ran, which is refused."""
    import math

    mse = float(((a - b) ** 2).mean())
    if mse == 0:
        raise RuntimeError("the bf16 image equals the fp32 one bit for bit: bf16 was not applied, nothing was measured")
    return 10 * math.log10(1.0 / mse)


def pixels(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Decoded images on [0, 1] (float, before 8-bit rounding), as the pipeline's decode computes them."""
    decoded = pipe.runners["vae_decoder"](latent_sample=latents / pipe.manifest["vae_scaling_factor"])["sample"]
    return (decoded.float() / 2 + 0.5).clamp(0, 1)


def compare(reference: tuple, other: tuple) -> dict:
    """PSNR, max/mean abs difference of the decoded images and of the final latents."""
    (ref_latents, ref_pixels), (latents, image) = reference, other
    return {"psnr_db": round(psnr(image, ref_pixels), 2), "max_abs_pixel": round(float((image - ref_pixels).abs().max()), 4),
            "mean_abs_pixel": round(float((image - ref_pixels).abs().mean()), 5),
            "latents_max_abs": round(float((latents - ref_latents).abs().max()), 4),
            "latents_relative": round(float((latents - ref_latents).abs().max() / ref_latents.abs().max()), 5)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--full-size", metavar="DIR", help="the directory benchmarks/cpu_backends.py keeps the full-size export in")
    source.add_argument("--tiny", action="store_true")
    parser.add_argument("--size", default=None, help="WxH (default 512x512 tiny, 256x256 full size)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--alpha", type=float, default=0.8)
    add_output_arguments(parser)
    args = parser.parse_args()
    label = "tiny-sd15" if args.tiny else "sd15-full-size"
    command = "python benchmarks/cpu_bf16_quality.py " + " ".join(sys.argv[1:])
    import openvino as ov

    from resadapter_rt.runtime.openvino_runners import BF16_COMPONENTS, OpenVINORunner, bf16_unavailable, openvino_cache_dir

    core = ov.Core()
    reason = bf16_unavailable(core)
    if reason is not None:
        out = output_dir(args, "cpu_bf16_quality") / f"cpu_bf16_quality_{label}.json"
        write_json(out, {"benchmark": "cpu_bf16_quality", "label": label, "result": not_measurable(reason),
                         "cpu_capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")],
                         "openvino": ov.__version__, "command": command})
        print(f"cpu_bf16_quality: {not_measurable(reason)} (recorded in {out})")
        return 0
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline, read_manifest
    from resadapter_rt.runtime.pipeline import ResAdapterPipeline

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            export = Path(tmp) / "tiny"
            export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic"), export, progress=lambda m: None)
        else:
            sys.path.insert(0, str(Path(__file__).parent))
            from cpu_backends import full_size_export

            export = full_size_export(Path(args.full_size))
        width, height = (int(v) for v in (args.size or ("512x512" if args.tiny else "256x256")).split("x"))
        manifest = read_manifest(export)
        compiled = {(name, precision): OpenVINORunner(export / spec["path"], precision, openvino_cache_dir(spec["sha256"]), core,
                                                      (tuple(i["name"] for i in spec["inputs"]), tuple(o["name"] for o in spec["outputs"])))
                    for name, spec in manifest["components"].items() for precision in ("fp32", "bf16")}
        components = list(manifest["components"])

        def pipeline(bf16: set[str]) -> ResAdapterPipeline:
            precisions = {name: "bf16" if name in bf16 else "fp32" for name in components}
            pipe = ResAdapterPipeline(export, manifest, {name: compiled[(name, p)] for name, p in precisions.items()}, "openvino")
            pipe.precisions = precisions
            return pipe

        configs = {"fp32": set(), "all bf16": set(components), **{f"{c} bf16": {c} for c in components},
                   "default policy (BF16_COMPONENTS)": set(components) & BF16_COMPONENTS}
        results = []
        for seed in (int(s) for s in args.seeds.split(",")):
            outputs, seconds = {}, {}
            for name, bf16 in configs.items():
                same = next((k for k, v in configs.items() if v == bf16 and k in outputs), None)
                if same is not None:
                    outputs[name], seconds[name] = outputs[same], seconds[same]
                    continue
                pipe = pipeline(bf16)
                if bf16 == {"vae_decoder"}:  # UNet and text encoder in fp32: the fp32 latents, decoded in bf16
                    outputs[name] = (outputs["fp32"][0], pixels(pipe, outputs["fp32"][0]))
                    continue
                started = time.perf_counter()
                latents = pipe(PROMPT, width=width, height=height, num_inference_steps=args.steps, seed=seed,
                               resadapter_alpha=args.alpha, output_type="latent").latents
                seconds[name] = round(time.perf_counter() - started, 1)
                outputs[name] = (latents, pixels(pipe, latents))
                print(f"[quality] seed {seed} {name}: {seconds[name]} s", flush=True)
            for name in configs:
                if name != "fp32":
                    row = {"seed": seed, "config": name, "bf16_components": sorted(configs[name]),
                           **compare(outputs["fp32"], outputs[name])}
                    results.append(row)
                    print(f"[quality] {json.dumps(row)}", flush=True)
    record = {"benchmark": "cpu_bf16_quality", "label": label, "width": width, "height": height, "steps": args.steps,
              "alpha": args.alpha, "prompt": PROMPT, "scheduler": "default (pipeline)", "openvino": ov.__version__,
              "bf16_components_default": sorted(BF16_COMPONENTS), "results": results,
              "command": command}
    out = write_json(output_dir(args, "cpu_bf16_quality") / f"cpu_bf16_quality_{label}.json", record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

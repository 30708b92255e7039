"""``resadapter-rt export``: merge, then export UNet, text encoder(s) and VAE to validated ONNX."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import (VALIDATION_SIZES_HELP, add_ip_adapter_arguments, add_model_arguments, default_export_dir,
                     ip_adapter_options, progress_printer, validation_sizes)


def add_parser(commands) -> None:
    export = commands.add_parser("export", help="merge and export UNet, text encoder(s) and VAE decoder to validated ONNX")
    add_model_arguments(export)
    export.add_argument("--dtype", default="fp32", help="fp32 (default) | fp16 (GroupNorm statistics and IO stay fp32; SDXL VAE stays fp32)")
    export.add_argument("--target", default="cpu", help="cpu | tensorrt | cuda: picks the GroupNorm form (default cpu)")
    export.add_argument("--controlnet", action="append", default=[], metavar="C", help="ControlNet folded into the UNet "
                        "graph (repeatable): diffusers dir | .safetensors with config.json beside it | hub id | tiny-sd15, "
                        "tiny-sdxl (built-in, random weights)")
    export.add_argument("--vae-encoder", action="store_true", help="also export the VAE encoder (image-to-image: generate --image)")
    add_ip_adapter_arguments(export)
    export.add_argument("--out", help="output directory (default: export/<model>--<adapter>--<alpha>--<target>)")
    export.add_argument("--validation-sizes", metavar="WxH[xB],...", help=VALIDATION_SIZES_HELP)
    export.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    export.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..export.exporter import ExportOptions, export_pipeline

    out = Path(args.out) if args.out else default_export_dir(args)
    options = ExportOptions(model=args.model, resadapter=args.resadapter, alpha=args.alpha, loras=tuple(args.lora),
                            dtype=args.dtype, target=args.target, config=args.config, controlnets=tuple(args.controlnet),
                            vae_encoder=args.vae_encoder, **ip_adapter_options(args), **validation_sizes(args))
    manifest = export_pipeline(options, out, force=args.force, progress=progress_printer(args.quiet))
    worst = max(r["relative_error"] for c in manifest["components"].values() for r in c["validation"])
    print(f"exported {manifest['family']} ({manifest['alpha_mode']} alpha) to {out} in {manifest['export_seconds']:.1f} s; "
          f"worst ONNX Runtime vs PyTorch relative error {worst:.1e}")
    return 0

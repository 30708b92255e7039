"""The ``resadapter-rt`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from .errors import ResAdapterRTError

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silences optional-vision import notices


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="tiny-sd15 | tiny-sdxl | pipeline dir | UNet dir | .safetensors | hub id")
    parser.add_argument("--config", help="for a single-file --model: a diffusers pipeline dir (or hub id) of its architecture")
    parser.add_argument("--resadapter", required=True, help="tiny-sd15 | tiny-sdxl | adapter dir | LoRA file | hub id owner/repo/subfolder")
    parser.add_argument("--alpha", default="1.0", help="ResAdapter LoRA scale in [0, 2] (default 1.0); export also takes 'dynamic'")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]", help="further LoRA to merge (repeatable)")


def _cmd_merge(args: argparse.Namespace) -> int:
    from .adapter import load_adapter
    from .files import atomic_directory, check_output_dir
    from .lora import read_lora_file
    from .merge import apply_lora, merge_adapter, parse_alpha, parse_lora_spec
    from .models import load_components
    from .provenance import merge_record

    alpha = parse_alpha(args.alpha)
    check_output_dir(Path(args.out), args.force)
    specs = [parse_lora_spec(s) for s in args.lora]
    adapter = load_adapter(args.resadapter)
    loras = [(read_lora_file(Path(path)), weight) for path, weight in specs]
    components = load_components(args.model, unet_only=True, config=args.config)
    logging.getLogger(__name__).info("%s", adapter.describe())
    unet = merge_adapter(components.unet, adapter, alpha, inplace=True)
    for lora, weight in loras:
        unet_layers = lora.for_component("unet")
        if len(unet_layers) < len(lora.layers):
            print(f"note: {lora.source}: {len(lora.layers) - len(unet_layers)} text-encoder layers are not part of a "
                  "UNet merge; `resadapter-rt export` applies them", file=sys.stderr)
        apply_lora(unet, unet_layers, weight, lora.source)
    out = Path(args.out)
    with atomic_directory(out, force=args.force) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
        record = merge_record(components, adapter, alpha, loras)
        (tmp / "resadapter_merge.json").write_text(json.dumps(record, indent=2))
    print(f"merged UNet ({adapter.family.display_name}, alpha {alpha:g}, {len(loras)} extra LoRA) written to {out}")
    return 0


def _default_export_dir(args: argparse.Namespace) -> Path:
    def stem(reference: str) -> str:
        return Path(reference.rstrip("/")).name.removesuffix(".safetensors") or "model"

    alpha = "dynamic" if args.alpha == "dynamic" else f"a{args.alpha}"
    return Path("export") / f"{stem(args.model)}--{stem(args.resadapter)}--{alpha}--{args.target}"


def _cmd_export(args: argparse.Namespace) -> int:
    from .exporter import ExportOptions, export_pipeline

    out = Path(args.out) if args.out else _default_export_dir(args)
    options = ExportOptions(model=args.model, resadapter=args.resadapter, alpha=args.alpha, loras=tuple(args.lora),
                            dtype=args.dtype, target=args.target, config=args.config)
    progress = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    manifest = export_pipeline(options, out, force=args.force, progress=progress)
    worst = max(r["relative_error"] for c in manifest["components"].values() for r in c["validation"])
    print(f"exported {manifest['family']} ({manifest['alpha_mode']} alpha) to {out} in {manifest['export_seconds']:.1f} s; "
          f"worst ONNX Runtime vs PyTorch relative error {worst:.1e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resadapter-rt", description="ResAdapter merge / export / run for SD1.5 and SDXL.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    merge = commands.add_parser("merge", help="merge a ResAdapter (and LoRAs) into a UNet; writes a diffusers UNet dir")
    _add_model_arguments(merge)
    merge.add_argument("--out", required=True, help="output directory (config.json + diffusion_pytorch_model.safetensors)")
    merge.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    merge.set_defaults(handler=_cmd_merge)

    export = commands.add_parser("export", help="merge and export UNet, text encoder(s) and VAE decoder to validated ONNX")
    _add_model_arguments(export)
    export.add_argument("--dtype", default="fp32", help="fp32 (default) | fp16 (GroupNorm statistics and IO stay fp32; SDXL VAE stays fp32)")
    export.add_argument("--target", default="cpu", help="cpu | tensorrt | cuda: picks the GroupNorm form (default cpu)")
    export.add_argument("--out", help="output directory (default: export/<model>--<adapter>--<alpha>--<target>)")
    export.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    export.set_defaults(handler=_cmd_export)
    return parser


def _quiet_library_progress_bars() -> None:
    """Our own progress lines say what is happening; per-file bars from the libraries are noise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s: %(message)s")
    _quiet_library_progress_bars()
    try:
        return args.handler(args)
    except ResAdapterRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; nothing was written to the output path", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

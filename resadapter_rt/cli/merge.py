"""``resadapter-rt merge``: a ResAdapter (and further LoRAs) merged into a UNet, written as a diffusers UNet dir."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .common import add_model_arguments


def add_parser(commands) -> None:
    merge = commands.add_parser("merge", help="merge a ResAdapter (and LoRAs) into a UNet; writes a diffusers UNet dir")
    add_model_arguments(merge)
    merge.add_argument("--out", required=True, help="output directory (config.json + diffusion_pytorch_model.safetensors)")
    merge.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    merge.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..files import atomic_directory, check_output_dir
    from ..models.adapter import load_adapter
    from ..models.components import load_components
    from ..models.lora import read_lora_file
    from ..models.merge import apply_lora, merge_adapter, parse_alpha, parse_lora_spec
    from ..models.provenance import merge_record

    alpha = parse_alpha(args.alpha)
    check_output_dir(Path(args.out), args.force)
    specs = [parse_lora_spec(s) for s in args.lora]
    out = Path(args.out)
    with atomic_directory(out, force=args.force) as tmp:
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
        unet.save_pretrained(tmp, safe_serialization=True)
        record = merge_record(components, adapter, alpha, loras)
        (tmp / "resadapter_merge.json").write_text(json.dumps(record, indent=2))
    print(f"merged UNet ({adapter.family.display_name}, alpha {alpha:g}, {len(loras)} extra LoRA) written to {out}")
    return 0

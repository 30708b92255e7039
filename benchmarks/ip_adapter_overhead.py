"""IP-Adapter overhead: one UNet step without an IP-Adapter, with one baked at scale 0.6, and with a runtime scale
(ONNX Runtime CPU, timed interleaved), plus the image encoder call that runs once per request.

python benchmarks/ip_adapter_overhead.py [--full-size] [--size 512x512 ...] [--batch 2] [--repeats 11]
Default: the tiny SD1.5 model. ``--full-size``: the real SD1.5 UNet layout with random weights (UNet only,
~3.4 GB, minutes to export) and a random plain IP-Adapter of the real shape (4 tokens into each of its 16
cross-attentions); the image encoder is the tiny one either way, so its time is not the real ViT-H/14's.
Writes benchmarks/results/ip_adapter_overhead_<model>.json with median/p90 per variant and the ratios.
Results go to a new directory under benchmarks/results/tmp/ (or --out DIR); --update-results replaces the
committed file in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json
from resadapter_rt.bench.suite import interleaved, machine_record
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.models.families import SD15
from resadapter_rt.models.tiny import full_size_unet_config, random_ip_adapter_state_dict, tiny_unet_config, write_tiny_image_encoder

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"plain": None, "ip_baked": 0.6, "ip_dynamic": "dynamic"}


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds_for(model: ort.InferenceSession, batch: int, height: int, width: int) -> dict[str, np.ndarray]:
    """Random inputs of the graph's own input shapes (dynamic axes filled in), the scale at 0.6."""
    g = np.random.default_rng(0)
    named = {"batch": batch, "latent_height": height // 8, "latent_width": width // 8, "tokens": 77}
    feeds = {}
    for value in model.get_inputs():
        shape = [named[d] if isinstance(d, str) else d for d in value.shape]
        feeds[value.name] = np.full(shape, 0.6, np.float32) if value.name == "ip_adapter_scale" else \
            g.standard_normal(shape).astype(np.float32)
    feeds["timestep"] = np.full([batch], 500.0, np.float32)
    return feeds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full-size", action="store_true", help="the real SD1.5 UNet layout (random weights) instead of the tiny one")
    parser.add_argument("--size", action="append", help="WxH pixels (repeatable); default 256x256 512x512 (+1000x600 tiny)")
    parser.add_argument("--batch", type=int, default=2, help="UNet batch (2: one image with classifier-free guidance)")
    parser.add_argument("--repeats", type=int, default=11)
    add_output_arguments(parser)
    args = parser.parse_args()
    label = "full-sd15-unet" if args.full_size else "tiny-sd15"
    sizes = [tuple(map(int, s.split("x"))) for s in (args.size or ["256x256", "512x512"] + ([] if args.full_size else ["1000x600"]))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model, adapter = "tiny-sd15", "tiny-sd15"
        if args.full_size:
            from diffusers import UNet2DConditionModel

            torch.manual_seed(0)
            UNet2DConditionModel(**full_size_unet_config(SD15)).save_pretrained(tmp / "unet")
            model, adapter = str(tmp / "unet"), str(REPO.parent / "shared/resadapter/resadapter_v2_sd1.5")
        config = full_size_unet_config(SD15) if args.full_size else tiny_unet_config(SD15)
        write_tiny_image_encoder(tmp / "ip" / "image_encoder")
        state = random_ip_adapter_state_dict(config, "plain", 7)
        save_file({f"{p}.{k}": v.contiguous() for p, d in state.items() for k, v in d.items()}, str(tmp / "ip" / "ip.safetensors"))
        sessions, encoder = {}, None
        for name, scale in VARIANTS.items():
            ip = {} if scale is None else {"ip_adapter": str(tmp / "ip" / "ip.safetensors"), "ip_adapter_scale": scale}
            out = tmp / name
            print(f"exporting {name} ...", flush=True)
            export_pipeline(ExportOptions(model=model, resadapter=adapter, alpha=1.0, validation_sizes=((328, 200, 1),), **ip),
                            out, progress=lambda m: None)
            sessions[name] = session(out / "unet" / "model.onnx")
            if name == "ip_dynamic":
                encoder = session(out / "image_encoder" / "model.onnx")
        for width, height in sizes:
            feeds = {name: feeds_for(s, args.batch, height, width) for name, s in sessions.items()}
            summary = interleaved({name: (lambda s=s, f=feeds[name]: s.run(None, f)) for name, s in sessions.items()}, args.repeats)
            base = summary["plain"]["median_ms"]
            ratios = {f"ratio_{name}_over_plain": summary[name]["median_ms"] / base for name in ("ip_baked", "ip_dynamic")}
            rows.append({"width": width, "height": height, "batch": args.batch, **summary, **ratios})
            print(f"{width}x{height} b{args.batch}: plain {base:.1f} ms, baked IP-Adapter x{ratios['ratio_ip_baked_over_plain']:.3f}, "
                  f"runtime scale x{ratios['ratio_ip_dynamic_over_plain']:.3f}", flush=True)
        pixels = {"pixel_values": np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)}
        image_encoder = interleaved({"image_encoder_batch2": lambda: encoder.run(None, pixels)}, args.repeats)
    record = {"benchmark": "ip_adapter_overhead", "model": label, "ip_adapter": "random plain (4 tokens), tiny image encoder",
              "backend": "onnxruntime CPUExecutionProvider", "repeats": args.repeats, **machine_record(), "results": rows,
              "image_encoder_per_request": image_encoder}
    path = write_json(output_dir(args, "ip_adapter_overhead") / f"ip_adapter_overhead_{label}.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

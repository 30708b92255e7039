"""Arguments and checks several commands share: the model/adapter arguments, generation arguments, output paths
and the PNG writer. Nothing here imports torch or diffusers at module level, so ``--help`` and usage errors
stay fast."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import ResAdapterRTError

VALIDATION_SIZES_HELP = ("off-trace sizes the export is validated at against PyTorch (default 328x200x2,1000x600,280x1000,1008x288; "
                         "the first also checks a 154-token prompt; the VAE decoder takes the first two); fewer make full-size exports faster")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --config, --resadapter, --alpha and --lora (merge, export, build)."""
    parser.add_argument("--model", required=True, help="tiny-sd15 | tiny-sdxl | pipeline dir | UNet dir | .safetensors | hub id")
    parser.add_argument("--config", help="for a single-file --model: a diffusers pipeline dir (or hub id) of its architecture")
    parser.add_argument("--resadapter", required=True, help="tiny-sd15 | tiny-sdxl | adapter dir | LoRA file | hub id owner/repo/subfolder")
    parser.add_argument("--alpha", default="1.0", help="ResAdapter LoRA scale in [0, 2] (default 1.0); export also takes 'dynamic'")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]", help="further LoRA to merge (repeatable)")


def add_ip_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    """--ip-adapter, --image-encoder and --ip-adapter-scale (export, build)."""
    parser.add_argument("--ip-adapter", metavar="FILE", help="IP-Adapter folded into the UNet graph: h94-format .safetensors "
                        "or .bin (plain, plus, full-face; SD1.5 or SDXL) | tiny-sd15, tiny-sdxl (built-in, random weights)")
    parser.add_argument("--image-encoder", metavar="DIR", help="its CLIPVisionModelWithProjection directory (default: "
                        "image_encoder/ beside the IP-Adapter file, as in h94/IP-Adapter)")
    parser.add_argument("--ip-adapter-scale", default="dynamic", help="dynamic (default: a UNet input, chosen per "
                        "request) | a number in (0, 2] baked into the graph")


def add_generation_arguments(parser: argparse.ArgumentParser, defaults: dict) -> None:
    """Prompt, steps, scheduler, guidance, seed, alpha, backend and precision (generate, demo)."""
    from ..runtime.schedulers import DEFAULT_SCHEDULER

    parser.add_argument("--prompt", default=defaults.get("prompt"), required="prompt" not in defaults, help="text prompt")
    parser.add_argument("--negative-prompt", help="negative prompt (default: none)")
    parser.add_argument("--steps", type=int, default=defaults.get("steps", 25), help="inference steps (default %(default)s)")
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER,
                        help="model (default: the scheduler saved with the model) | dpm++2m-karras | dpm++2m | euler | euler-a | ddim | lcm")
    parser.add_argument("--guidance", type=float, default=defaults.get("guidance", 7.0),
                        help="classifier-free guidance scale (default %(default)s; <= 1 disables)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--alpha", default=defaults.get("alpha", "auto"),
                        help="ResAdapter alpha for dynamic exports: a number in [0, 2] or auto (default %(default)s)")
    parser.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) | torch | tensorrt | openvino")
    parser.add_argument("--cpu-precision", help="openvino only: fp32 | bf16 | auto (default: bf16 where the CPU has native bf16)")
    parser.add_argument("--num-images", type=int, default=1, help="images per prompt")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def ip_adapter_options(args: argparse.Namespace) -> dict:
    """ExportOptions' IP-Adapter fields from --ip-adapter, --image-encoder and --ip-adapter-scale."""
    return {"ip_adapter": args.ip_adapter, "image_encoder": args.image_encoder, "ip_adapter_scale": args.ip_adapter_scale}


def validation_sizes(args: argparse.Namespace) -> dict:
    """ExportOptions' validation sizes when --validation-sizes was given (fewer sizes: faster full-size exports)."""
    from ..export.exporter import parse_validation_sizes

    return {"validation_sizes": parse_validation_sizes(args.validation_sizes)} if args.validation_sizes else {}


def default_export_dir(args: argparse.Namespace) -> Path:
    """export/<model>--<adapter>--<alpha>--<target>, named from the command's arguments."""
    def stem(reference: str) -> str:
        return Path(reference.rstrip("/")).name.removesuffix(".safetensors") or "model"

    alpha = "dynamic" if args.alpha == "dynamic" else f"a{args.alpha}"
    return Path("export") / f"{stem(args.model)}--{stem(args.resadapter)}--{alpha}--{args.target}"


def check_generation_args(args: argparse.Namespace) -> None:
    """Backend, CPU precision, seed, scheduler and alpha, checked before anything is loaded."""
    from ..runtime.openvino_runners import check_cpu_precision_for
    from ..runtime.pipeline import ResAdapterPipeline
    from ..runtime.runners import check_backend
    from ..runtime.schedulers import check_scheduler_name

    check_backend(args.backend)
    check_cpu_precision_for(args.backend, args.cpu_precision)
    ResAdapterPipeline.check_seed(args.seed)
    check_scheduler_name(args.scheduler)
    if args.alpha != "auto":
        from ..models.merge import parse_alpha

        parse_alpha(args.alpha)


def check_output_file(output: Path) -> None:
    """An image path must name a file in a writable directory, and not a user's directory."""
    from ..files import unwritable_ancestor

    if output.is_dir():
        raise ResAdapterRTError(f"{output}: is a directory; pass a file name for -o/--output, e.g. {output / 'out.png'}")
    if output.suffix.lower() != ".png":
        raise ResAdapterRTError(f"{output}: images are written as PNG; pass a path ending in .png")
    blocked = unwritable_ancestor(output)
    if blocked is not None:
        raise ResAdapterRTError(f"{output}: cannot write here ({blocked} is not a writable directory)")


def save_png(image, path: Path, parameters: dict) -> None:
    """PNG with the generation parameters in its text metadata, written atomically."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", json.dumps(parameters))
    info.add_text("Software", "resadapter-rt")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        image.save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def progress_printer(quiet: bool):
    """A progress callback printing each message to stderr, or nothing with -q."""
    import sys

    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr, flush=True))

"""``resadapter-rt build``: merge, export (kept inside the engine dir) and build TensorRT / TensorRT-RTX engines."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ResAdapterRTError
from .common import (VALIDATION_SIZES_HELP, add_ip_adapter_arguments, add_model_arguments, default_export_dir,
                     ip_adapter_options, progress_printer, validation_sizes)


def add_parser(commands) -> None:
    build = commands.add_parser("build", help="merge, export (kept inside the engine dir) and build TensorRT engines")
    add_model_arguments(build)
    build.add_argument("--dtype", default="fp32", help="ONNX dtype of the kept export (default fp32)")
    build.add_argument("--validation-sizes", metavar="WxH[xB],...", help=VALIDATION_SIZES_HELP)
    build.add_argument("--controlnet", action="append", default=[], metavar="C", help="ControlNet folded into the UNet (as export)")
    build.add_argument("--vae-encoder", action="store_true", help="also the VAE encoder (image-to-image)")
    add_ip_adapter_arguments(build)
    build.add_argument("--profile", action="append", default=[], metavar="SPEC",
                       help="MIN-MAX[@AMIN-AMAX][,opt=WxH][,batch=A-B][,tokens=A-B] (repeatable: one engine, several profiles); "
                            "default: the adapter's model-card preset")
    build.add_argument("--static", action="append", default=[], metavar="WxH", help="a one-size profile (repeatable)")
    build.add_argument("--runtime", default="auto", help="tensorrt | tensorrt-rtx | auto (default: tensorrt when installed, "
                       "else tensorrt-rtx)")
    build.add_argument("--compute-capability", metavar="X.Y[,X.Y]", help="TensorRT-RTX targets, e.g. 8.6,8.9,12.0 "
                       "(default: its own set, 8.0/8.6/8.9/12.0+)")
    build.add_argument("--precision", help="TensorRT only: fp16 (default) | bf16 | fp32 (TensorRT-RTX takes the export's --dtype)")
    build.add_argument("--opt-level", type=int, default=3, help="builder optimization level 0-5 (default 3)")
    build.add_argument("--refittable", action="store_true", help="TensorRT only: build refittable engines")
    build.add_argument("--strongly-typed", action="store_true", help="strongly typed network (always on for TensorRT-RTX)")
    build.add_argument("--timing-cache", metavar="FILE", help="TensorRT only: timing cache to load and update (default DIR/timing.cache)")
    build.add_argument("--out", help="engine directory (default: engines/<model>--<adapter>--<alpha>--tensorrt)")
    build.add_argument("--force", action="store_true", help="re-export and rebuild even if cached")
    build.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    build.set_defaults(handler=run, target="tensorrt")


def run(args: argparse.Namespace) -> int:
    from ..engines.build import BuildOptions, build_engines, build_target
    from ..engines.prepare import prepare_export
    from ..engines.profiles import ResolutionProfile, preset_for
    from ..engines.runtimes import parse_compute_capabilities, resolve_runtime
    from ..export.exporter import ExportOptions

    profiles = [ResolutionProfile.parse(spec) for spec in args.profile]
    profiles += [ResolutionProfile.static(size) for size in args.static]
    out = Path(args.out) if args.out else Path("engines") / default_export_dir(args).name
    options = ExportOptions(model=args.model, resadapter=args.resadapter, alpha=args.alpha, loras=tuple(args.lora),
                            dtype=args.dtype, target="tensorrt", config=args.config, controlnets=tuple(args.controlnet),
                            vae_encoder=args.vae_encoder, **ip_adapter_options(args), **validation_sizes(args)).checked()
    capabilities = parse_compute_capabilities(args.compute_capability) if args.compute_capability is not None else None
    flags = dict(precision=args.precision, optimization_level=args.opt_level, refittable=args.refittable,
                 strongly_typed=args.strongly_typed, compute_capabilities=capabilities, timing_cache=args.timing_cache)
    runtime = resolve_runtime(args.runtime).name
    # flags, runtime version and (TensorRT) the GPU are checked before the long export
    build_target(BuildOptions(profiles=tuple(profiles) or (ResolutionProfile.parse("128-1024"),), runtime=runtime, **flags))
    progress = progress_printer(args.quiet)
    export_dir = out / "onnx"
    manifest = prepare_export(out, options, args.force, progress)
    build = BuildOptions(profiles=tuple(profiles or [preset_for(args.resadapter, manifest["family"])]), runtime=runtime, **flags)
    try:
        result = build_engines(out, build, force=args.force, progress=progress, verbose=args.verbose)
    except ResAdapterRTError as exc:
        raise ResAdapterRTError(f"{exc}; the validated export is kept in {export_dir} (see `resadapter-rt inspect {out}`)") from None
    print(f"{runtime} engines in {out}: built {', '.join(result.built) or 'none'}; reused {', '.join(result.reused) or 'none'}")
    return 0

"""The ``resadapter-rt`` command line."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from .errors import ResAdapterRTError
from .miniature import DEMO_ALPHA, DEMO_GUIDANCE, DEMO_PROMPT

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # silences optional-vision import notices


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="tiny-sd15 | tiny-sdxl | pipeline dir | UNet dir | .safetensors | hub id")
    parser.add_argument("--config", help="for a single-file --model: a diffusers pipeline dir (or hub id) of its architecture")
    parser.add_argument("--resadapter", required=True, help="tiny-sd15 | tiny-sdxl | adapter dir | LoRA file | hub id owner/repo/subfolder")
    parser.add_argument("--alpha", default="1.0", help="ResAdapter LoRA scale in [0, 2] (default 1.0); export also takes 'dynamic'")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]", help="further LoRA to merge (repeatable)")


def _cmd_merge(args: argparse.Namespace) -> int:
    from .models.adapter import load_adapter
    from .files import atomic_directory, check_output_dir
    from .models.lora import read_lora_file
    from .models.merge import apply_lora, merge_adapter, parse_alpha, parse_lora_spec
    from .models.components import load_components
    from .models.provenance import merge_record

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


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import TrainOptions, parse_sizes, train

    options = TrainOptions(
        model=args.model, data=Path(args.data), out=Path(args.out), rank=args.rank, batch_size=args.batch_size,
        learning_rate=args.learning_rate, resolution_multiple=args.resolution_multiple, min_side=args.min_side,
        max_side=args.max_side, seed=args.seed, steps=args.steps, epochs=args.epochs,
        checkpointing_steps=args.checkpointing_steps, resume=Path(args.resume) if args.resume else None,
        validation_prompt=args.validation_prompt, validation_steps=args.validation_steps, format=args.format,
        validation_sizes=parse_sizes(args.validation_sizes or "512x512") if args.validation_prompt or args.validation_sizes else [],
        config=args.config)
    try:
        result = train(options, progress=not args.quiet, notify=lambda line: print(line, file=sys.stderr))
    except KeyboardInterrupt:
        print(f"error: interrupted; finished checkpoints are kept in {Path(args.out) / 'checkpoints'} "
              "(continue with --resume CHECKPOINT --out NEW_DIR)", file=sys.stderr)
        return 130
    losses = [r["loss"] for r in result.history if r.get("event") == "step"]
    print(f"trained {result.steps} steps in {result.seconds:.1f} s (loss {losses[0]:.4f} -> {losses[-1]:.4f}); "
          f"ResAdapter ({args.format} format) written to {result.out}")
    return 0


def _default_export_dir(args: argparse.Namespace) -> Path:
    def stem(reference: str) -> str:
        return Path(reference.rstrip("/")).name.removesuffix(".safetensors") or "model"

    alpha = "dynamic" if args.alpha == "dynamic" else f"a{args.alpha}"
    return Path("export") / f"{stem(args.model)}--{stem(args.resadapter)}--{alpha}--{args.target}"


def _validation_sizes(args: argparse.Namespace) -> dict:
    """ExportOptions' validation sizes when --validation-sizes was given (fewer sizes: faster full-size exports)."""
    from .export.exporter import parse_validation_sizes

    return {"validation_sizes": parse_validation_sizes(args.validation_sizes)} if args.validation_sizes else {}


def _ip_adapter_options(args: argparse.Namespace) -> dict:
    """ExportOptions' IP-Adapter fields from --ip-adapter, --image-encoder and --ip-adapter-scale."""
    return {"ip_adapter": args.ip_adapter, "image_encoder": args.image_encoder, "ip_adapter_scale": args.ip_adapter_scale}


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.exporter import ExportOptions, export_pipeline

    out = Path(args.out) if args.out else _default_export_dir(args)
    options = ExportOptions(model=args.model, resadapter=args.resadapter, alpha=args.alpha, loras=tuple(args.lora),
                            dtype=args.dtype, target=args.target, config=args.config, controlnets=tuple(args.controlnet),
                            vae_encoder=args.vae_encoder, **_ip_adapter_options(args), **_validation_sizes(args))
    progress = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    manifest = export_pipeline(options, out, force=args.force, progress=progress)
    worst = max(r["relative_error"] for c in manifest["components"].values() for r in c["validation"])
    print(f"exported {manifest['family']} ({manifest['alpha_mode']} alpha) to {out} in {manifest['export_seconds']:.1f} s; "
          f"worst ONNX Runtime vs PyTorch relative error {worst:.1e}")
    return 0


def _save_png(image, path: Path, parameters: dict) -> None:
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


def _generate_images(pipe, args: argparse.Namespace, width: int, height: int, output: Path, quiet: bool,
                     extra: tuple[dict, dict] = ({}, {})) -> None:
    """``extra``: further pipeline keyword arguments and the PNG metadata that records them (ControlNet)."""
    from tqdm import tqdm

    bars = []  # drawn at the first step, so that a refused request prints only its one error line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=f"{width}x{height}", unit="step", file=sys.stderr, leave=False))
        bars[0].update(1)

    result = pipe(args.prompt, height=height, width=width, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  negative_prompt=args.negative_prompt, seed=args.seed, num_images_per_prompt=args.num_images,
                  resadapter_alpha=args.alpha, scheduler=args.scheduler, callback=None if quiet else progress, **extra[0])
    for bar in bars:
        bar.close()
    paths = [output if i == 0 else output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(len(result.images))]
    for index, (image, path) in enumerate(zip(result.images, paths)):
        _save_png(image, path, {**result.parameters, **extra[1], "image_index": index})
    precision = f" ({pipe.cpu_precision}: {', '.join(f'{k} {v}' for k, v in pipe.precisions.items())})" if pipe.precisions else ""
    print(f"{', '.join(map(str, paths))}: {width}x{height}, alpha {result.alpha:g} ({result.parameters['alpha_mode']}), "
          f"{pipe.backend}{precision} | {result.timings.summary()}")


def _check_output_file(output: Path) -> None:
    """An image path must name a file in a writable directory, and not a user's directory."""
    from .files import unwritable_ancestor

    if output.is_dir():
        raise ResAdapterRTError(f"{output}: is a directory; pass a file name for -o/--output, e.g. {output / 'out.png'}")
    if output.suffix.lower() != ".png":
        raise ResAdapterRTError(f"{output}: images are written as PNG; pass a path ending in .png")
    blocked = unwritable_ancestor(output)
    if blocked is not None:
        raise ResAdapterRTError(f"{output}: cannot write here ({blocked} is not a writable directory)")


def _cmd_generate(args: argparse.Namespace) -> int:
    from .runtime.pipeline import ResAdapterPipeline

    _check_generation_args(args)
    _check_output_file(Path(args.output))
    from .runtime.controlnet import command_line_control

    pipe = ResAdapterPipeline.from_artifacts(args.artifacts, backend=args.backend, cpu_precision=args.cpu_precision)
    control = command_line_control(pipe.manifest, args.control_image, args.controlnet_scale, args.control_guidance_start,
                                   args.control_guidance_end, args.canny)
    from .runtime.canny import read_image

    if args.image is not None:  # image-to-image, inpainting with --mask
        control = ({**control[0], "image": read_image(Path(args.image), "source image"), "strength": args.strength},
                   {**control[1], "image": args.image})
    elif args.mask is not None:
        raise ResAdapterRTError("--mask needs --image (the image it applies to; white = re-generate)")
    if args.mask is not None:
        control = ({**control[0], "mask_image": read_image(Path(args.mask), "mask image")}, {**control[1], "mask": args.mask})
    if args.ip_adapter_image is not None or args.ip_adapter_scale is not None:
        image = read_image(Path(args.ip_adapter_image), "IP-Adapter image") if args.ip_adapter_image is not None else None
        control = ({**control[0], "ip_adapter_image": image, "ip_adapter_scale": args.ip_adapter_scale},
                   {**control[1], **({"ip_adapter_image": args.ip_adapter_image} if image is not None else {})})
    _generate_images(pipe, args, args.width, args.height, Path(args.output), args.quiet, control)
    return 0


def _cmd_canny(args: argparse.Namespace) -> int:
    from .runtime.canny import canny_image, check_thresholds, read_image

    check_thresholds(args.low, args.high)
    _check_output_file(Path(args.output))
    edges = canny_image(read_image(Path(args.input)), args.low, args.high)
    _save_png(edges, Path(args.output), {"canny": {"input": args.input, "low": args.low, "high": args.high}})
    print(f"{args.output}: canny edges of {args.input} ({edges.width}x{edges.height}, thresholds {args.low}/{args.high})")
    return 0


def _check_generation_args(args: argparse.Namespace) -> None:
    from .runtime.schedulers import check_scheduler_name
    from .runtime.openvino_runners import check_cpu_precision_for
    from .runtime.runners import check_backend

    from .runtime.pipeline import ResAdapterPipeline

    check_backend(args.backend)
    check_cpu_precision_for(args.backend, args.cpu_precision)
    ResAdapterPipeline.check_seed(args.seed)
    check_scheduler_name(args.scheduler)
    if args.alpha != "auto":
        from .models.merge import parse_alpha

        parse_alpha(args.alpha)


VALIDATION_SIZES_HELP = ("off-trace sizes the export is validated at against PyTorch (default 328x200x2,1000x600,280x1000,1008x288; "
                         "the first also checks a 154-token prompt; the VAE decoder takes the first two); fewer make full-size exports faster")
def _cmd_demo(args: argparse.Namespace) -> int:
    from .miniature.demo import ensure_exports, generate_cells, grid_image, write_report
    from .runtime.pipeline import ResAdapterPipeline

    _check_generation_args(args)
    output_dir = Path(args.output_dir)
    _check_output_file(output_dir / "demo.png")
    quiet = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    exports = ensure_exports(Path(args.artifacts), print, quiet)
    pipes = {name: ResAdapterPipeline.from_artifacts(path, backend=args.backend, cpu_precision=args.cpu_precision)
             for name, path in exports.items()}
    cells = generate_cells(pipes, args.prompt, args.seed, args.steps, args.guidance, args.alpha, scheduler=args.scheduler)
    grid = grid_image(cells, args.prompt, args.seed)
    _save_png(grid, output_dir / "demo.png", {"prompt": args.prompt, "seed": args.seed, "steps": args.steps,
                                              "guidance": args.guidance, "model": "mini-sd15"})
    write_report(cells, output_dir / "demo.json", args.prompt, args.seed, args.steps, args.guidance)
    for cell in cells:
        alpha = f"alpha {cell.alpha:g}" if cell.alpha is not None else "no adapter"
        verdict = cell.verdict.describe() if cell.verdict else "not scorable (prompt outside the grammar)"
        print(f"{cell.width}x{cell.height} {cell.label:>13} | {cell.variant:>10} ({alpha}) | {verdict}")
    print(f"{output_dir / 'demo.png'}: the grid (rows: without / with the ResAdapter); verdicts in {output_dir / 'demo.json'}")
    return 0


def _add_generation_arguments(parser: argparse.ArgumentParser, defaults: dict) -> None:
    from .runtime.schedulers import DEFAULT_SCHEDULER

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


def _add_ip_adapter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ip-adapter", metavar="FILE", help="IP-Adapter folded into the UNet graph: h94-format .safetensors "
                        "or .bin (plain, plus, full-face; SD1.5 or SDXL)")
    parser.add_argument("--image-encoder", metavar="DIR", help="its CLIPVisionModelWithProjection directory (default: "
                        "image_encoder/ beside the IP-Adapter file, as in h94/IP-Adapter)")
    parser.add_argument("--ip-adapter-scale", default="dynamic", help="dynamic (default: a UNet input, chosen per "
                        "request) | a number in (0, 2] baked into the graph")


def _default_engine_dir(args: argparse.Namespace) -> Path:
    return Path("engines") / _default_export_dir(args).name


def _cmd_build(args: argparse.Namespace) -> int:
    from .engines.build import BuildOptions, build_engines, build_target
    from .engines.prepare import prepare_export
    from .engines.profiles import ResolutionProfile, preset_for
    from .engines.runtimes import parse_compute_capabilities, resolve_runtime
    from .export.exporter import ExportOptions

    profiles = [ResolutionProfile.parse(spec) for spec in args.profile]
    profiles += [ResolutionProfile.static(size) for size in args.static]
    out = Path(args.out) if args.out else _default_engine_dir(args)
    options = ExportOptions(model=args.model, resadapter=args.resadapter, alpha=args.alpha, loras=tuple(args.lora),
                            dtype=args.dtype, target="tensorrt", config=args.config, controlnets=tuple(args.controlnet),
                            vae_encoder=args.vae_encoder, **_ip_adapter_options(args), **_validation_sizes(args)).checked()
    capabilities = parse_compute_capabilities(args.compute_capability) if args.compute_capability is not None else None
    flags = dict(precision=args.precision, optimization_level=args.opt_level, refittable=args.refittable,
                 strongly_typed=args.strongly_typed, compute_capabilities=capabilities, timing_cache=args.timing_cache)
    runtime = resolve_runtime(args.runtime).name
    # flags, runtime version and (TensorRT) the GPU are checked before the long export
    build_target(BuildOptions(profiles=tuple(profiles) or (ResolutionProfile.parse("128-1024"),), runtime=runtime, **flags))
    progress = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr, flush=True))
    export_dir = out / "onnx"
    manifest = prepare_export(out, options, args.force, progress)
    build = BuildOptions(profiles=tuple(profiles or [preset_for(args.resadapter, manifest["family"])]), runtime=runtime, **flags)
    try:
        result = build_engines(out, build, force=args.force, progress=progress, verbose=args.verbose)
    except ResAdapterRTError as exc:
        raise ResAdapterRTError(f"{exc}; the validated export is kept in {export_dir} (see `resadapter-rt inspect {out}`)") from None
    print(f"{runtime} engines in {out}: built {', '.join(result.built) or 'none'}; reused {', '.join(result.reused) or 'none'}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .engines.describe import describe_artifacts

    print(describe_artifacts(Path(args.directory), args.size))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench.suite import run_cpu_suite

    record = run_cpu_suite(Path(args.results), full_size=args.full_size, repeats=args.repeats)
    print((Path(args.results) / "cpu_bench.md").read_text())
    return 0 if record else 1


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import require_serving_libraries
    from .serve.options import ServeOptions

    options = ServeOptions(artifacts=args.artifacts, backend=args.backend, host=args.host, port=args.port, replicas=args.replicas,
                           max_batch_size=args.max_batch_size, max_queue=args.max_queue, timeout=args.timeout,
                           address=args.address).checked()
    require_serving_libraries()
    from .serve.app import serve_forever

    return serve_forever(options)


def _cmd_triton_repo(args: argparse.Namespace) -> int:
    from .serve.triton_repo import write_triton_repository

    models = write_triton_repository(Path(args.directory), Path(args.out), force=args.force)
    print(f"Triton model repository in {args.out}: {', '.join(models)}")
    return 0


class _OneLineParser(argparse.ArgumentParser):
    """Usage mistakes as one ``error:`` line (exit 2) naming the help to read, like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="resadapter-rt", description="ResAdapter merge / export / run for SD1.5 and SDXL.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    merge = commands.add_parser("merge", help="merge a ResAdapter (and LoRAs) into a UNet; writes a diffusers UNet dir")
    _add_model_arguments(merge)
    merge.add_argument("--out", required=True, help="output directory (config.json + diffusion_pytorch_model.safetensors)")
    merge.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    merge.set_defaults(handler=_cmd_merge)

    train = commands.add_parser("train", help="train a ResAdapter on a folder of captioned images at many sizes")
    train.add_argument("--model", required=True, help="tiny-sd15 | tiny-sdxl | pipeline dir | .safetensors | hub id (frozen)")
    train.add_argument("--config", help="for a single-file --model: a diffusers pipeline dir (or hub id) of its architecture")
    train.add_argument("--data", required=True, help="images with captions (metadata.jsonl file_name/text, or NAME.txt beside NAME.png)")
    train.add_argument("--out", required=True, help="new run directory: adapter files, checkpoints/, validation/, train_log.jsonl")
    train.add_argument("--rank", type=int, help="LoRA rank of the sampler convs (default 8)")
    length = train.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimisation steps to train (default: one epoch)")
    length.add_argument("--epochs", type=int, help="passes over the data (default 1)")
    train.add_argument("--batch-size", type=int, help="images per step, all of one bucket size (default 4)")
    train.add_argument("--learning-rate", type=float, help="AdamW learning rate, betas (0.95, 0.99) (default 1e-4)")
    train.add_argument("--resolution-multiple", type=int, help="bucket sides are multiples of this (default 64)")
    train.add_argument("--min-side", type=int, help="smallest allowed image side; smaller images are an error (default 128)")
    train.add_argument("--max-side", type=int, help="larger images are scaled down to this longer side (default 1024)")
    train.add_argument("--seed", type=int, help="seed of data order, flips, noise and timesteps (default 0)")
    train.add_argument("--checkpointing-steps", type=int, default=500, help="resumable checkpoint every K steps and at the end (0: none; default 500)")
    train.add_argument("--resume", metavar="CHECKPOINT", help="continue OUT/checkpoints/checkpoint-N of an earlier run into a new --out "
                       "(its rank, batch size, learning rate, size rules and seed are reused)")
    train.add_argument("--validation-prompt", help="render this prompt after each epoch into OUT/validation/")
    train.add_argument("--validation-sizes", metavar="WxH,...", help="validation sizes (default 512x512)")
    train.add_argument("--validation-steps", type=int, default=20, help="inference steps per validation image (default 20)")
    train.add_argument("--format", default="official", help="official (kohya keys + alpha, release layout; default) | peft "
                       "(the training script's PEFT keys + groupnorm_state_dict.pt)")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=_cmd_train)

    export = commands.add_parser("export", help="merge and export UNet, text encoder(s) and VAE decoder to validated ONNX")
    _add_model_arguments(export)
    export.add_argument("--dtype", default="fp32", help="fp32 (default) | fp16 (GroupNorm statistics and IO stay fp32; SDXL VAE stays fp32)")
    export.add_argument("--target", default="cpu", help="cpu | tensorrt | cuda: picks the GroupNorm form (default cpu)")
    export.add_argument("--controlnet", action="append", default=[], metavar="C", help="ControlNet folded into the UNet "
                        "graph (repeatable): diffusers dir | .safetensors with config.json beside it | hub id")
    export.add_argument("--vae-encoder", action="store_true", help="also export the VAE encoder (image-to-image: generate --image)")
    _add_ip_adapter_arguments(export)
    export.add_argument("--out", help="output directory (default: export/<model>--<adapter>--<alpha>--<target>)")
    export.add_argument("--validation-sizes", metavar="WxH[xB],...", help=VALIDATION_SIZES_HELP)
    export.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    export.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    export.set_defaults(handler=_cmd_export)

    build = commands.add_parser("build", help="merge, export (kept inside the engine dir) and build TensorRT engines")
    _add_model_arguments(build)
    build.add_argument("--dtype", default="fp32", help="ONNX dtype of the kept export (default fp32)")
    build.add_argument("--validation-sizes", metavar="WxH[xB],...", help=VALIDATION_SIZES_HELP)
    build.add_argument("--controlnet", action="append", default=[], metavar="C", help="ControlNet folded into the UNet (as export)")
    build.add_argument("--vae-encoder", action="store_true", help="also the VAE encoder (image-to-image)")
    _add_ip_adapter_arguments(build)
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
    build.set_defaults(handler=_cmd_build, target="tensorrt")

    inspect = commands.add_parser("inspect", help="describe an export or engine directory")
    inspect.add_argument("directory")
    inspect.add_argument("--size", metavar="WxH", help="say whether this size is covered")
    inspect.set_defaults(handler=_cmd_inspect)

    bench = commands.add_parser("bench", help="CPU benchmark suite: UNet step per backend, end to end vs diffusers, scaling")
    bench.add_argument("--results", default="benchmarks/results", help="where JSON/PNG/Markdown go")
    bench.add_argument("--full-size", action="store_true", help="also the full-size SD1.5 UNet (minutes, ~15 GiB RAM)")
    bench.add_argument("--repeats", type=int, default=3)
    bench.set_defaults(handler=_cmd_bench)

    generate = commands.add_parser("generate", help="generate images from an export directory")
    generate.add_argument("--artifacts", required=True, help="export directory (from `resadapter-rt export`)")
    generate.add_argument("--width", type=int, required=True, help="pixels, a multiple of 8")
    generate.add_argument("--height", type=int, required=True, help="pixels, a multiple of 8")
    generate.add_argument("-o", "--output", default="out.png", help="PNG path (more images get -1, -2 ... suffixes)")
    _add_generation_arguments(generate, {})
    generate.add_argument("--control-image", action="append", default=[], metavar="FILE",
                          help="control image per ControlNet of the export, in export order (repeatable)")
    generate.add_argument("--canny", action="store_true", help="turn the control images into canny edges (100/200) first")
    generate.add_argument("--controlnet-scale", type=float, nargs="+", metavar="S", help="conditioning scale: one, or one per "
                          "ControlNet (default 1.0)")
    generate.add_argument("--control-guidance-start", type=float, default=0.0, help="fraction of steps before ControlNets act (default 0)")
    generate.add_argument("--control-guidance-end", type=float, default=1.0, help="fraction of steps after which they stop (default 1)")
    generate.add_argument("--image", metavar="FILE", help="source image: image-to-image (needs an export with --vae-encoder)")
    generate.add_argument("--strength", type=float, default=0.8, help="image-to-image: how much is re-generated, (0, 1] (default 0.8)")
    generate.add_argument("--mask", metavar="FILE", help="inpainting mask for --image, same size (white: re-generate)")
    generate.add_argument("--ip-adapter-image", metavar="FILE", help="image prompt (needs an export with --ip-adapter)")
    generate.add_argument("--ip-adapter-scale", type=float, metavar="S", help="image prompt strength in [0, 2] "
                          "(default 1.0, or the export's baked scale)")
    generate.set_defaults(handler=_cmd_generate)

    canny = commands.add_parser("canny", help="canny edge map of an image (a control image for canny ControlNets)")
    canny.add_argument("input", help="image file")
    canny.add_argument("output", help="PNG path")
    canny.add_argument("--low", type=int, default=100, help="lower hysteresis threshold (default 100)")
    canny.add_argument("--high", type=int, default=200, help="upper hysteresis threshold (default 200)")
    canny.set_defaults(handler=_cmd_canny)

    demo = commands.add_parser("demo", help="the built-in mini-sd15 with and without its ResAdapter at in- and out-of-domain "
                                            "sizes, offline: export if missing, generate, score, one grid PNG")
    demo.add_argument("--artifacts", default="export/mini-sd15-demo", help="root of the two exports to use or create "
                      "(model/: --resadapter none, resadapter/: dynamic alpha)")
    demo.add_argument("--output-dir", default="outputs", help="where demo.png and demo.json go (default outputs/)")
    _add_generation_arguments(demo, {"prompt": DEMO_PROMPT, "steps": 20, "guidance": DEMO_GUIDANCE, "alpha": DEMO_ALPHA})
    demo.set_defaults(handler=_cmd_demo)

    serve = commands.add_parser("serve", help="serve an export over the Open Inference Protocol (KServe v2 HTTP) on Ray Serve")
    serve.add_argument("--artifacts", required=True, help="export or engine directory")
    serve.add_argument("--backend", default="onnxruntime", help="onnxruntime (default) | torch | tensorrt | onnxruntime-tensorrt")
    serve.add_argument("--host", default="127.0.0.1", help="HTTP address (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="HTTP port (default %(default)s)")
    serve.add_argument("--replicas", type=int, default=1, help="model replicas, one GPU each for GPU backends (default 1)")
    serve.add_argument("--max-batch-size", type=int, default=4, help="equal requests per UNet batch (default 4)")
    serve.add_argument("--max-queue", type=int, default=32, help="requests waiting for a replica; beyond: HTTP 503 (default 32)")
    serve.add_argument("--timeout", type=float, default=300.0, help="per-request deadline in seconds; beyond: HTTP 504 (default 300)")
    serve.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting a local Ray")
    serve.set_defaults(handler=_cmd_serve)

    triton = commands.add_parser("triton-repo", help="write a Triton Inference Server model repository (one model per "
                                 "component + a python-backend BLS pipeline model)")
    triton.add_argument("directory", help="export or engine directory")
    triton.add_argument("--out", required=True, help="new repository directory")
    triton.add_argument("--force", action="store_true", help="replace a repository this tool wrote")
    triton.set_defaults(handler=_cmd_triton_repo)
    return parser


def _quiet_library_progress_bars() -> None:
    """Our own progress lines say what is happening; per-file bars from the libraries are noise."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def _os_error_line(exc: OSError) -> str:
    """One line for a failed file operation: which file, what the system said, what to do."""
    where = f"{exc.filename}: " if exc.filename else ""
    hint = {errno.ENOSPC: "free disk space or write elsewhere", errno.EFBIG: "free disk space or write elsewhere",
            errno.EDQUOT: "free disk space or write elsewhere", errno.EACCES: "check the permissions",
            errno.EROFS: "write to another location"}.get(exc.errno, "check the path and try again")
    return f"{where}{exc.strerror or exc} ({hint})"


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, if a library wrapped one (e.g. a write failing inside an exporter)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError) and exc.errno is not None:
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


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
    except Exception as exc:  # one line for the user; the traceback with --verbose
        if args.verbose:
            raise
        os_error = _os_error_in(exc)
        if os_error is not None:
            print(f"error: {_os_error_line(os_error)}; nothing was written to the output path", file=sys.stderr)
            return 2
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"error: unexpected {type(exc).__name__}: {first} (a bug in resadapter-rt: run with --verbose for the "
              "traceback and report it)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

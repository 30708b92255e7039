"""``resadapter-rt generate``: images from an export or engine directory (text-to-image, image-to-image,
inpainting, ControlNet, IP-Adapter)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ResAdapterRTError
from .common import add_generation_arguments, check_generation_args, check_output_file, save_png


def add_parser(commands) -> None:
    generate = commands.add_parser("generate", help="generate images from an export directory")
    generate.add_argument("--artifacts", required=True, help="export directory (from `resadapter-rt export`)")
    generate.add_argument("--width", type=int, required=True, help="pixels, a multiple of 8")
    generate.add_argument("--height", type=int, required=True, help="pixels, a multiple of 8")
    generate.add_argument("-o", "--output", default="out.png", help="PNG path (more images get -1, -2 ... suffixes)")
    add_generation_arguments(generate, {})
    generate.add_argument("--prompt-weighting", default="a1111", metavar="SYNTAX",
                          help="a1111 (default: (text:1.3), (text), [text], BREAK) | compel (text++, (text)1.3, .blend(), "
                               ".and()) | none (the prompt is plain text)")
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
    tiles = generate.add_argument_group("beyond the engine's sizes (MultiDiffusion tiles, tiled VAE, hires fix)")
    tiles.add_argument("--tile-size", type=int, metavar="PX", help="denoise the canvas in windows of PX x PX (a size the "
                       "engine covers); dynamic alpha is chosen for the window")
    tiles.add_argument("--tile-stride", type=int, metavar="PX", help="window step, at most --tile-size (default: --tile-size)")
    tiles.add_argument("--circular", action="store_true", help="wrap the width (360-degree panoramas)")
    tiles.add_argument("--tile-batch", type=int, metavar="N", help="windows per UNet call (default: the engine profile's "
                       "batch range, else 8)")
    tiles.add_argument("--vae-tiling", action="store_true", help="decode/encode in tiles even where the VAE "
                       "covers the size (default: only beyond it)")
    tiles.add_argument("--hires-scale", type=float, metavar="S", help="hires fix: generate at --width x --height, upscale "
                       "S x, then image-to-image at that size (needs an export with --vae-encoder)")
    tiles.add_argument("--hires-strength", type=float, metavar="T", help="hires fix: how much the second pass re-generates, "
                       "(0, 1] (default 0.5)")
    tiles.add_argument("--hires-steps", type=int, metavar="N", help="hires fix: second-pass steps (default: --steps)")
    generate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..runtime.canny import read_image
    from ..runtime.controlnet import command_line_control
    from ..runtime.pipeline import ResAdapterPipeline
    from ..runtime.prompt_weighting import check_prompts

    check_generation_args(args)
    check_prompts([args.prompt] + ([args.negative_prompt] if args.negative_prompt is not None else []), args.prompt_weighting)
    check_output_file(Path(args.output))
    hires = hires_options(args)  # checked before the export is loaded
    pipe = ResAdapterPipeline.from_artifacts(args.artifacts, backend=args.backend, cpu_precision=args.cpu_precision)
    control = command_line_control(pipe.manifest, args.control_image, args.controlnet_scale, args.control_guidance_start,
                                   args.control_guidance_end, args.canny)
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
    tiling = {"tile_size": args.tile_size, "tile_stride": args.tile_stride, "circular": args.circular,
              "tile_batch": args.tile_batch, **({"vae_tiling": True} if args.vae_tiling else {})}
    control = ({**control[0], **tiling}, control[1])
    if hires is not None:
        from ..runtime.hires import HiresFix

        pipe = HiresFix(pipe, *hires)
    generate_images(pipe, args, args.width, args.height, Path(args.output), args.quiet, control)
    return 0


def hires_options(args: argparse.Namespace) -> tuple | None:
    """--hires-scale/--hires-strength/--hires-steps checked: (scale, strength, steps), or None without --hires-scale."""
    from ..runtime.hires import DEFAULT_STRENGTH, check_hires

    if args.hires_scale is None:
        if args.hires_strength is not None or args.hires_steps is not None:
            raise ResAdapterRTError("--hires-strength and --hires-steps need --hires-scale (e.g. --hires-scale 2)")
        return None
    return check_hires(args.hires_scale, DEFAULT_STRENGTH if args.hires_strength is None else args.hires_strength, args.hires_steps)


def generate_images(pipe, args: argparse.Namespace, width: int, height: int, output: Path, quiet: bool,
                    extra: tuple[dict, dict] = ({}, {})) -> None:
    """Run the pipeline and write its PNGs; ``extra``: further pipeline keyword arguments and the PNG metadata that
    records them (ControlNet, image-to-image, IP-Adapter)."""
    from tqdm import tqdm

    bars = []  # drawn at the first step, so that a refused request prints only its one error line

    def progress(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, desc=f"{width}x{height}", unit="step", file=sys.stderr, leave=False))
        bars[0].update(1)

    result = pipe(args.prompt, height=height, width=width, num_inference_steps=args.steps, guidance_scale=args.guidance,
                  negative_prompt=args.negative_prompt, seed=args.seed, num_images_per_prompt=args.num_images,
                  resadapter_alpha=args.alpha, scheduler=args.scheduler, callback=None if quiet else progress,
                  prompt_weighting=args.prompt_weighting, **extra[0])
    for bar in bars:
        bar.close()
    from ..models.tiny import random_weight_parts

    random_parts = random_weight_parts(pipe.manifest)  # built-in tiny models: say so in the PNG and the summary
    note = {"random_weights": random_parts} if random_parts else {}
    paths = [output if i == 0 else output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(len(result.images))]
    for index, (image, path) in enumerate(zip(result.images, paths)):
        save_png(image, path, {**result.parameters, **extra[1], **note, "image_index": index})
    precision = f" ({pipe.cpu_precision}: {', '.join(f'{k} {v}' for k, v in pipe.precisions.items())})" if pipe.precisions else ""
    warning = f" | random weights ({', '.join(random_parts)}): a test image, not a trained model's output" if random_parts else ""
    size = "x".join(map(str, result.images[0].size))  # the hires fix makes a larger image than --width x --height
    print(f"{', '.join(map(str, paths))}: {size}, alpha {result.alpha:g} ({result.parameters['alpha_mode']}), "
          f"{pipe.backend}{precision} | {result.timings.summary()}{warning}")

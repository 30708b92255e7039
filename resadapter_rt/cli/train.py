"""``resadapter-rt train``: a ResAdapter trained on a folder of captioned images at many sizes."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

RANK0_GRACE_S = 2.0


def add_parser(commands) -> None:
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
    scale = train.add_argument_group("scale (data parallel under `torchrun`/`accelerate launch`: --batch-size is the global "
                                     "batch, split over the processes)")
    scale.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                       help="auto: CUDA when present (cuda:LOCAL_RANK under a launcher), else the CPU (default auto)")
    scale.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"),
                       help="frozen networks in fp16/bf16, trainable LoRA and norms in fp32; fp16 adds a gradient scaler "
                       "(default no)")
    scale.add_argument("--gradient-accumulation-steps", type=int,
                       help="batches per optimisation step (effective batch K x --batch-size; default 1)")
    scale.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations in the backward: "
                       "less memory, more time")
    scale.add_argument("--allow-tf32", action="store_true", help="TF32 matmuls and convolutions on Ampere+ GPUs")
    scale.add_argument("--cache-latents", action="store_true", help="VAE latents (per image, size and flip) and text "
                       "embeddings (per caption) computed once and reused across epochs, in host memory")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ResAdapterRTError
    from ..training import TrainOptions, parse_sizes, train
    from ..training.accelerator import launch_rank
    from ..training.trainer import random_weights_note

    main = launch_rank() == 0  # under torchrun / accelerate launch only rank 0 prints
    try:
        options = TrainOptions(
            model=args.model, data=Path(args.data), out=Path(args.out), rank=args.rank, batch_size=args.batch_size,
            learning_rate=args.learning_rate, resolution_multiple=args.resolution_multiple, min_side=args.min_side,
            max_side=args.max_side, seed=args.seed, steps=args.steps, epochs=args.epochs,
            checkpointing_steps=args.checkpointing_steps, resume=Path(args.resume) if args.resume else None,
            validation_prompt=args.validation_prompt, validation_steps=args.validation_steps, format=args.format,
            validation_sizes=parse_sizes(args.validation_sizes or "512x512") if args.validation_prompt or args.validation_sizes else [],
            config=args.config, device=args.device, mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps, gradient_checkpointing=args.gradient_checkpointing,
            allow_tf32=args.allow_tf32, cache_latents=args.cache_latents)
        result = train(options, progress=not args.quiet and main, notify=lambda line: print(line, file=sys.stderr))
    except ResAdapterRTError:
        if main:
            raise
        # Rank 0 says what was wrong; give it time to print before the launcher stops the group on our exit.
        time.sleep(RANK0_GRACE_S)
        return 2
    except KeyboardInterrupt:
        if main:
            print(f"error: interrupted; finished checkpoints are kept in {Path(args.out) / 'checkpoints'} "
                  "(continue with --resume CHECKPOINT --out NEW_DIR)", file=sys.stderr)
        return 130
    if not main:
        return 0
    losses = [r["loss"] for r in result.history if r.get("event") == "step" and r["step"] > result.first_step]
    what = f"trained {result.new_steps} steps"
    if result.first_step:
        what += f" (steps {result.first_step + 1}-{result.steps}, resumed from step {result.first_step})"
    note = random_weights_note(args.model)
    print(f"{what} in {result.seconds:.1f} s (loss {losses[0]:.4f} -> {losses[-1]:.4f}); "
          f"ResAdapter ({args.format} format) written to {result.out}" + (f"; note: {note}" if note else ""))
    return 0

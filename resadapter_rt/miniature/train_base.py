"""Train the ``mini-sd15`` base model from scratch on the shapes grammar at 128x128 only.

    python -m resadapter_rt.miniature.train_base --out DIR [--seed 0] [--unet-steps N]

Three stages, all seeded: (1) the AutoencoderKL is the hand-set colour codec (``models.mini.colour_codec_vae``:
8x8 block means in, 8x8 blocks out), so the decoder is no part of the resolution question; (2) a fixed set
of 128x128 images encoded once, the latent scaling factor set to 1/std of their latents (as SD's 0.18215
was chosen); (3) the UNet and the text encoder together on noise prediction with SD1.5's schedule,
10 % empty captions for classifier-free guidance, and an exponential moving average of the weights,
which is what is saved. ``DIR`` becomes a diffusers pipeline directory plus ``resadapter_rt.json``
(training size) and ``train_base.json`` (options, losses, seconds).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

from ..models.mini import (MODEL_FACTS, PIXEL_RANGE, TRAINING_SIZE, colour_codec_vae, scheduler_config, text_config,
                           unet_config, write_tokenizer)
from .shapes import sample

CAPTION_DROPOUT = 0.1
EMA_DECAY = 0.999


def _pixels(images: list) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images]) / 127.5 - 1.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def _log(message: str) -> None:
    print(message, flush=True)


@torch.no_grad()
def encode_dataset(vae: torch.nn.Module, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Latent means and stds of ``count`` training images at 128x128, and their captions."""
    means, stds, captions = [], [], []
    for start in range(0, count, 64):
        pairs = [sample(seed + 2, i, TRAINING_SIZE, TRAINING_SIZE) for i in range(start, min(count, start + 64))]
        posterior = vae.encode(_pixels([image for image, _ in pairs])).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
        captions += [spec.caption for _, spec in pairs]
    return torch.cat(means), torch.cat(stds), captions


def train_unet(vae: torch.nn.Module, tokenizer_dir: Path, steps: int, batch: int, images: int, seed: int,
               lr: float) -> tuple[torch.nn.Module, torch.nn.Module, float, list[float]]:
    """UNet and text encoder on noise prediction at 128x128; returns their EMA copies, the scaling factor, losses."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    means, stds, captions = encode_dataset(vae, images, seed)
    generator = torch.Generator().manual_seed(seed)
    sampled = means + stds * torch.randn(means.shape, generator=generator)
    scaling = float(1.0 / sampled.std())
    _log(f"encoded {images} images at {TRAINING_SIZE}x{TRAINING_SIZE}: latent std {1 / scaling:.4f}")

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    token_ids = tokenizer(captions + [""], padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
    empty = token_ids[-1]
    token_ids = token_ids[:-1]
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer))))
    unet = UNet2DConditionModel(**unet_config())
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)
    schedule = DDPMScheduler(**scheduler_config())
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    losses = []
    for step in range(steps):
        index = torch.randint(0, images, (batch,), generator=generator)
        latents = (means[index] + stds[index] * torch.randn(means[index].shape, generator=generator)) * scaling
        ids = token_ids[index].clone()
        ids[torch.rand(batch, generator=generator) < CAPTION_DROPOUT] = empty
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, schedule.config.num_train_timesteps, (batch,), generator=generator)
        noisy = schedule.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_text, text_encoder)):
                for e, p in zip(ema.parameters(), live.parameters()):
                    e.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        if step % 100 == 0 or step == steps - 1:
            _log(f"unet step {step + 1}/{steps} loss {np.mean(losses[-100:]):.5f}")
    return ema_unet, ema_text, scaling, losses


def write_pipeline(out: Path, vae: torch.nn.Module, unet: torch.nn.Module, text_encoder: torch.nn.Module,
                   scaling: float, tokenizer_dir: Path) -> None:
    """A diffusers StableDiffusionPipeline directory (safetensors) plus the training-size fact."""
    import shutil

    from diffusers import EulerDiscreteScheduler

    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    text_encoder.save_pretrained(out / "text_encoder")
    if tokenizer_dir != out / "tokenizer":
        shutil.copytree(tokenizer_dir, out / "tokenizer", dirs_exist_ok=True)
    EulerDiscreteScheduler(**scheduler_config()).save_pretrained(out / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "safety_checker": [None, None],
             "feature_extractor": [None, None], "requires_safety_checker": False}
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / MODEL_FACTS).write_text(json.dumps({"training_size": TRAINING_SIZE, "pixel_range": list(PIXEL_RANGE)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="new pipeline directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-steps", type=int, default=3000)
    parser.add_argument("--unet-batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=8192, help="distinct 128x128 training images")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} is not empty; choose a new --out")
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer_dir = args.out / "tokenizer"
    write_tokenizer(tokenizer_dir)
    vae = colour_codec_vae()
    unet, text_encoder, scaling, unet_losses = train_unet(vae, tokenizer_dir, args.unet_steps, args.unet_batch,
                                                          args.images, args.seed, lr=3e-4)
    write_pipeline(args.out, vae, unet, text_encoder, scaling, tokenizer_dir)
    record = {"options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "seconds": round(time.perf_counter() - began, 1),
              "torch_threads": torch.get_num_threads(), "latent_scaling_factor": scaling,
              "unet_loss_last100": float(np.mean(unet_losses[-100:])), "unet_losses_every50": unet_losses[::50]}
    (args.out / "train_base.json").write_text(json.dumps(record, indent=1) + "\n")
    _log(f"wrote {args.out} in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

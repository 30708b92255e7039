"""Every GroupNorm input shape of the SD1.5 / SDXL UNets and their VAE decoder, from diffusers itself.

The models are built from their published configs on the ``meta`` device (no weights, no
memory) and run once with forward hooks on every ``nn.GroupNorm``, so the shapes are exactly what
diffusers feeds the norms. A norm counts as followed by SiLU where ``fuse_group_norm_silu`` would
fuse it. UNets run at batch 2 (classifier-free guidance); the VAE decodes one image (batch 1).
Used by the roofline model, the GPU benchmark and the launch-plan tests.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

# the parts of the published configs (runwayml/stable-diffusion-v1-5, stabilityai/stable-diffusion-xl-base-1.0)
# that differ from diffusers' defaults
SD15_UNET = dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8)
SDXL_UNET = dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 transformer_layers_per_block=(1, 2, 10), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
           down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
MODELS = ("sd15-unet", "sdxl-unet", "vae-decoder")
UNET_BATCH = 2
VAE_BATCH = 1


@dataclass(frozen=True)
class NormShape:
    """One GroupNorm input shape of a model at a resolution, and how often it occurs per forward."""

    model: str
    batch: int
    channels: int
    height: int
    width: int
    groups: int
    silu: bool
    count: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.height, self.width)


def _followed_by_silu(parent: nn.Module, leaf: str) -> bool:
    from .fuse import _fusable_resnet

    if leaf in ("norm1", "norm2"):
        return _fusable_resnet(parent)
    return leaf == "conv_norm_out" and isinstance(getattr(parent, "conv_act", None), nn.SiLU)


def _trace(model: nn.Module, run, name: str) -> tuple[NormShape, ...]:
    """Run ``run()`` with a hook on every GroupNorm of ``model``; shapes as [N, C, H, W] (3-D: H*W x 1)."""
    modules = dict(model.named_modules())
    seen: Counter = Counter()
    hooks = []
    for path, module in modules.items():
        if isinstance(module, nn.GroupNorm):
            parent_path, _, leaf = path.rpartition(".")
            silu = _followed_by_silu(modules[parent_path], leaf)

            def hook(module, inputs, output, silu=silu):
                n, c, *spatial = inputs[0].shape
                h, w = (spatial + [1])[:2] if len(spatial) < 2 else spatial
                seen[(n, c, h, w, module.num_groups, silu)] += 1

            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in hooks:
            handle.remove()
    return tuple(NormShape(name, *key, count) for key, count in sorted(seen.items()))


@functools.lru_cache(maxsize=None)
def group_norm_shapes(model: str, pixels: int) -> tuple[NormShape, ...]:
    """The GroupNorm inputs of ``model`` (one of ``MODELS``) generating a ``pixels`` x ``pixels`` image."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    latent = pixels // 8
    meta = torch.device("meta")
    with meta:
        if model == "vae-decoder":
            vae = AutoencoderKL(**VAE)
            return _trace(vae.decoder, lambda: vae.decode(torch.empty(VAE_BATCH, 4, latent, latent)), model)
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, not {model!r}")
        unet = UNet2DConditionModel(**(SD15_UNET if model == "sd15-unet" else SDXL_UNET))
    sample = torch.empty(UNET_BATCH, 4, latent, latent, device=meta)
    timestep = torch.ones(UNET_BATCH, device=meta)
    text = torch.empty(UNET_BATCH, 77, unet.config.cross_attention_dim, device=meta)
    extra = {}
    if model == "sdxl-unet":
        extra = {"added_cond_kwargs": {"text_embeds": torch.empty(UNET_BATCH, 1280, device=meta),
                                       "time_ids": torch.empty(UNET_BATCH, 6, device=meta)}}
    return _trace(unet, lambda: unet(sample, timestep, text, **extra), model)

"""The trainable ResAdapter set on a UNet, and writing it out in the release or training-script format.

Trainable is exactly what ResAdapter trains: a rank-r PEFT LoRA (``lora_alpha = r``, Gaussian init,
so it starts as a no-op) on every down/upsampler conv, plus the affine weights of both GroupNorms
of every ResNet in the down, mid and up blocks. Everything else is frozen (``conv_norm_out`` and
attention norms included).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..models.adapter import LEGACY_NORM_FILE, LORA_FILE, NORM_FILE, RESNET_NORM

FORMATS = ("official", "peft")
LORA_TARGETS = r".*(down_blocks\.\d+\.downsamplers|up_blocks\.\d+\.upsamplers)\.0\.conv$"


def add_trainable_adapter(unet: nn.Module, rank: int, seed: int) -> list[tuple[str, nn.Parameter]]:
    """Freeze ``unet``, add the sampler-conv LoRA, unfreeze the ResNet norms; return the trainable parameters."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    for name, parameter in unet.named_parameters():
        if RESNET_NORM.match(name):
            parameter.requires_grad_(True)
    return [(name, p) for name, p in unet.named_parameters() if p.requires_grad]


def adapter_tensors(unet: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(PEFT LoRA state ``<module>.lora_A/B.weight``, ResNet norm state), detached fp32 copies."""
    from peft.utils import get_peft_model_state_dict

    lora = {k: v.detach().float().cpu().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    norms = {k: v.detach().float().cpu().clone().contiguous() for k, v in unet.named_parameters() if RESNET_NORM.match(k)}
    return lora, norms


def official_lora(lora: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """PEFT keys -> the release's kohya keys (``lora_unet_<path>.lora_down/up.weight`` + ``.alpha``), fp16."""
    out = {}
    for key, tensor in lora.items():
        module, _, half = key.rpartition(".lora_")
        kohya = "lora_unet_" + module.replace(".", "_")
        out[f"{kohya}.{'lora_down' if half.startswith('A') else 'lora_up'}.weight"] = tensor.half()
        out[f"{kohya}.alpha"] = torch.tensor(float(rank)).half()
    return out


def write_adapter(unet: nn.Module, directory: Path, fmt: str, rank: int) -> list[Path]:
    """Write the adapter into ``directory``; norms first, so a LoRA file never appears without its norms."""
    from safetensors.torch import save_file

    lora, norms = adapter_tensors(unet)
    if fmt == "official":
        norm_path = directory / NORM_FILE
        save_file(norms, str(norm_path))
        lora_state, metadata = official_lora(lora, rank), None
    else:  # the training script: diffusers' save_lora_weights keys and a (flat) groupnorm_state_dict.pt
        norm_path = directory / LEGACY_NORM_FILE
        torch.save(norms, norm_path)
        lora_state, metadata = {f"unet.{k}": v for k, v in lora.items()}, {"format": "pt"}
    save_file(lora_state, str(directory / LORA_FILE), metadata=metadata)
    return [norm_path, directory / LORA_FILE]

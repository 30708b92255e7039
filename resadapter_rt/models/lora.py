"""LoRA weights in any common file format, normalised to (down, up, scale) per target module.

Key conversion (kohya ``lora_unet_*`` / ``lora_te*_*``, PEFT ``lora_A``/``lora_B``, diffusers
``lora.down``/``lora.up``) is delegated to diffusers' own ``lora_state_dict`` so that we name
modules exactly as diffusers does; the arithmetic is ours.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from safetensors import safe_open

from ..errors import ResAdapterRTError
from ..files import read_safetensors

_HALVES = {".lora_A.weight": "down", ".lora_B.weight": "up"}
# Top-level pipeline components a LoRA key can address.
COMPONENT_PREFIXES = ("unet", "text_encoder_2", "text_encoder")


@dataclass
class LoraLayer:
    """One low-rank update ``delta_W = scale * up @ down`` for the module it targets."""

    down: torch.Tensor  # [r, in] or [r, in, kh, kw]
    up: torch.Tensor  # [out, r] or [out, r, 1, 1]
    scale: float  # network alpha / rank (1.0 when the file stores no alpha)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self) -> torch.Tensor:
        """The dense weight update, in fp32, shaped ``[out, in, *kernel]``."""
        down = self.down.float().flatten(1)
        up = self.up.float().flatten(1)
        return (up @ down).reshape(self.up.shape[0], *self.down.shape[1:]) * self.scale


@dataclass
class LoraWeights:
    """All layers of one LoRA, keyed ``<component>.<module path>`` (e.g. ``unet.down_blocks.0...conv``)."""

    layers: dict[str, LoraLayer]
    source: str

    def for_component(self, component: str) -> dict[str, LoraLayer]:
        """Layers addressed to one pipeline component, keyed by module path inside it."""
        prefix = component + "."
        return {k[len(prefix):]: v for k, v in self.layers.items() if k.startswith(prefix)}


def _adapter_metadata(path: Path) -> dict:
    """PEFT config diffusers stores in the safetensors header (``lora_adapter_metadata``), if any."""
    try:
        with safe_open(str(path), "pt") as handle:
            raw = (handle.metadata() or {}).get("lora_adapter_metadata")
    except Exception:
        return {}
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _peft_scale(metadata: Mapping, component: str, module: str, rank: int) -> float:
    """Scale from a PEFT config (``lora_alpha / r``, honouring alpha_pattern); 1.0 without one."""
    config = metadata.get(f"{component}.lora_adapter_metadata", metadata) if metadata else {}
    if not isinstance(config, Mapping) or "lora_alpha" not in config:
        return 1.0
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = float(value)
    return alpha / rank


def _to_peft_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' converters: old attention-processor and ``lora.down`` names -> PEFT ``lora_A``/``lora_B``."""
    from diffusers.utils.state_dict_utils import DIFFUSERS_OLD_TO_PEFT, UNET_TO_DIFFUSERS, convert_state_dict

    unet = {k: v for k, v in state_dict.items() if k.startswith("unet.")}
    others = {k: v for k, v in state_dict.items() if not k.startswith("unet.")}
    return {**convert_state_dict(unet, UNET_TO_DIFFUSERS), **convert_state_dict(others, DIFFUSERS_OLD_TO_PEFT)}


def _alpha_by_module(network_alphas: Mapping[str, float]) -> dict[str, float]:
    """diffusers keys alphas by module (``x.alpha``) or by old down-weight name: map both to modules."""
    by_module = {}
    for key, value in network_alphas.items():
        base = key.removesuffix(".alpha")
        converted = next(iter(_to_peft_keys({base: torch.empty(0)})))
        by_module[converted.removesuffix(".lora_A.weight")] = float(value)
    return by_module


def _split_key(key: str) -> tuple[str, str, str] | None:
    """``unet.a.b.lora_A.weight`` -> (component, module path, "down"|"up"); None if not a LoRA weight."""
    for suffix, half in _HALVES.items():
        if key.endswith(suffix):
            target = key[: -len(suffix)]
            for component in COMPONENT_PREFIXES:
                if target.startswith(component + "."):
                    return component, target[len(component) + 1:], half
            return "unet", target, half
    return None


def lora_from_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str, metadata: Mapping | None = None
) -> LoraWeights:
    """Normalise a LoRA state dict of any supported format; ranks and alphas come from the tensors."""
    from diffusers import StableDiffusionXLPipeline  # its converter covers SD1.5 and SDXL kohya keys

    quiet = logging.getLogger("diffusers")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        converted, network_alphas = StableDiffusionXLPipeline.lora_state_dict(dict(state_dict))
        converted = _to_peft_keys(converted)
        alphas = _alpha_by_module(network_alphas or {})
    except (ValueError, KeyError, RuntimeError, IndexError) as exc:
        raise ResAdapterRTError(f"{source}: not a LoRA in a known key format ({exc})") from None
    finally:
        quiet.setLevel(level)

    halves: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in converted.items():
        parsed = _split_key(key)
        if parsed is None:
            raise ResAdapterRTError(
                f"{source}: key {key!r} is not a LoRA weight this tool understands (expected lora_A/lora_B, "
                "lora.down/lora.up or kohya lora_down/lora_up); DoRA, LoHa and LoKr are not supported"
            )
        component, module, half = parsed
        halves.setdefault((component, module), {})[half] = tensor
    layers: dict[str, LoraLayer] = {}
    for (component, module), pair in sorted(halves.items()):
        name = f"{component}.{module}"
        if set(pair) != {"down", "up"}:
            missing = ({"down", "up"} - set(pair)).pop()
            raise ResAdapterRTError(f"{source}: LoRA for {name} has no '{missing}' matrix; the file is incomplete")
        down, up = pair["down"], pair["up"]
        if down.ndim not in (2, 4) or up.ndim != down.ndim:
            raise ResAdapterRTError(
                f"{source}: LoRA for {name} has down {list(down.shape)} and up {list(up.shape)}; "
                "expected 2-D (linear) or 4-D (conv) matrices of equal rank"
            )
        if up.shape[1] != down.shape[0] or (up.ndim == 4 and tuple(up.shape[2:]) != (1, 1)):
            raise ResAdapterRTError(
                f"{source}: LoRA for {name} has inconsistent rank: down {list(down.shape)} gives rank "
                f"{down.shape[0]} but up {list(up.shape)} expects [out, {down.shape[0]}{', 1, 1' if up.ndim == 4 else ''}]"
            )
        rank = int(down.shape[0])
        alpha = alphas.get(name)
        if alpha is not None:
            scale = float(alpha) / rank
        else:
            scale = _peft_scale(metadata or {}, component, module, rank)
        layers[name] = LoraLayer(down=down, up=up, scale=scale)
    if not layers:
        raise ResAdapterRTError(f"{source}: contains no LoRA weights (no lora_down/lora_up or lora_A/lora_B keys)")
    return LoraWeights(layers=layers, source=source)


def read_lora_file(path: Path) -> LoraWeights:
    """Read a LoRA ``.safetensors`` file in kohya, PEFT or diffusers format."""
    path = Path(path)
    return lora_from_state_dict(read_safetensors(path), source=str(path), metadata=_adapter_metadata(path))

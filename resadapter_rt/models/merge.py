"""Folding a ResAdapter (and further LoRAs) into model weights: ``merge_adapter``, ``apply_lora``."""

from __future__ import annotations

import copy
import math
from typing import Iterable, Mapping

import torch
from torch import nn

from .adapter import ResAdapterWeights
from ..errors import ResAdapterRTError
from .families import family_of_unet_config
from .lora import LoraLayer, LoraWeights
from .components import PipelineComponents

ALPHA_RANGE = (0.0, 2.0)


def parse_alpha(value: object) -> float:
    """A ResAdapter alpha: a finite number in [0, 2] (official practice: 0.2-1.0)."""
    try:
        alpha = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ResAdapterRTError(f"alpha {value!r} is not a number; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)") from None
    if not math.isfinite(alpha) or not ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]:
        raise ResAdapterRTError(f"alpha {value!r} is out of range; use a value in [0, 2], e.g. 1.0 (official 0.2-1.0)")
    return alpha


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``path[:weight]`` -> (path, weight); the weight defaults to 1.0 and may be negative."""
    path, sep, weight_text = spec.rpartition(":")
    if not sep or not weight_text or "/" in weight_text or "\\" in weight_text:
        return spec, 1.0
    try:
        weight = float(weight_text)
    except ValueError:
        raise ResAdapterRTError(f"--lora {spec!r}: weight {weight_text!r} is not a number; write FILE:WEIGHT, e.g. lcm.safetensors:1.0") from None
    if not math.isfinite(weight):
        raise ResAdapterRTError(f"--lora {spec!r}: weight must be finite")
    return path, weight


def _submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule(path)``, also across transformers 5's flattened CLIP (no ``text_model.``)."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        if path.startswith("text_model."):
            return model.get_submodule(path.removeprefix("text_model."))
        raise


def _target(model: nn.Module, component: str, path: str, layer: LoraLayer, source: str) -> nn.Module:
    """The module a LoRA layer updates, after checking it exists and its weight has the right shape."""
    try:
        module = _submodule(model, path)
    except AttributeError:
        raise ResAdapterRTError(
            f"{source}: LoRA targets {component}.{path}, which this model does not have; "
            "the LoRA was made for another architecture"
        ) from None
    weight = getattr(module, "weight", None)
    expected = (layer.up.shape[0], *layer.down.shape[1:])
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(expected):
        actual = list(weight.shape) if isinstance(weight, torch.Tensor) else "no weight"
        raise ResAdapterRTError(
            f"{source}: LoRA for {component}.{path} makes a {list(expected)} update but the model's weight is "
            f"{actual}; the LoRA was made for a different model size or family"
        )
    return module


def check_adapter_fits(unet: nn.Module, adapter: ResAdapterWeights) -> None:
    """Raise a one-line error unless every adapter tensor has a target of the right shape."""
    model_family = family_of_unet_config(unet.config)
    if adapter.family is not None and adapter.family != model_family:
        raise ResAdapterRTError(
            f"{adapter.source}: this is a {adapter.family.display_name} ResAdapter but the model is "
            f"{model_family.display_name}; use the resadapter_*_{model_family.name.replace('sd15', 'sd1.5')} variant"
        )
    for key, layer in adapter.lora.layers.items():
        _target(unet, "unet", key.removeprefix("unet."), layer, adapter.source)
    params = dict(unet.named_parameters())
    for key, value in (adapter.norms or {}).items():
        if key not in params:
            raise ResAdapterRTError(f"{adapter.source}: norm weight {key} has no counterpart in this UNet; the adapter is for another architecture")
        if params[key].shape != value.shape:
            raise ResAdapterRTError(
                f"{adapter.source}: norm weight {key} is {list(value.shape)} but the UNet's is "
                f"{list(params[key].shape)}; the adapter was made for a different model size"
            )


@torch.no_grad()
def apply_lora(model: nn.Module, layers: Mapping[str, LoraLayer], weight: float, source: str, component: str = "unet") -> int:
    """Add ``weight * delta`` of each layer to its module's weight, in place (fp32 math). Returns the count."""
    targets = [(path, layer, _target(model, component, path, layer, source)) for path, layer in layers.items()]
    for _, layer, module in targets:
        merged = module.weight.float() + weight * layer.delta().to(module.weight.device)
        module.weight.copy_(merged.to(module.weight.dtype))
    return len(targets)


@torch.no_grad()
def replace_norms(unet: nn.Module, norms: Mapping[str, torch.Tensor]) -> None:
    """Overwrite ResNet GroupNorm affines with the adapter's values (always a full overwrite)."""
    params = dict(unet.named_parameters())
    for key, value in norms.items():
        params[key].copy_(value.to(params[key].dtype))


def merge_adapter(unet: nn.Module, adapter: ResAdapterWeights, alpha: float = 1.0, *, inplace: bool = False) -> nn.Module:
    """Return ``unet`` with the ResAdapter folded in: LoRA scaled by ``alpha``, norms replaced.

    The caller's model is left untouched unless ``inplace=True``.
    """
    alpha = parse_alpha(alpha)
    check_adapter_fits(unet, adapter)
    target = unet if inplace else copy.deepcopy(unet)
    apply_lora(target, adapter.lora.for_component("unet"), alpha, adapter.source)
    if adapter.norms:
        replace_norms(target, adapter.norms)
    return target


def merge_loras(networks: Mapping[str, nn.Module], loras: Iterable[tuple[LoraWeights, float]]) -> dict[str, int]:
    """Fold extra LoRAs (LCM-LoRA, style LoRAs) into the given networks in place.

    Returns how many layers were merged per component. Layers addressed to a component that is
    not in ``networks`` are an error, so nothing is silently dropped.
    """
    counts: dict[str, int] = {}
    for lora, weight in loras:
        components = {key.split(".", 1)[0] for key in lora.layers}
        missing = sorted(components - set(networks))
        if missing:
            raise ResAdapterRTError(f"{lora.source}: has layers for {missing[0]}, which is not loaded here")
        for component in sorted(components):
            done = apply_lora(networks[component], lora.for_component(component), weight, lora.source, component)
            counts[component] = counts.get(component, 0) + done
    return counts


def merge_pipeline(
    components: PipelineComponents,
    adapter: ResAdapterWeights,
    alpha: float = 1.0,
    loras: Iterable[tuple[LoraWeights, float]] = (),
    *,
    inplace: bool = False,
) -> PipelineComponents:
    """A pipeline whose UNet carries the ResAdapter and whose networks carry the extra LoRAs.

    Only the networks a LoRA touches are copied; the caller's objects change only with ``inplace``.
    """
    loras = list(loras)
    unet = merge_adapter(components.unet, adapter, alpha, inplace=inplace)
    present = components.networks()
    touched = {key.split(".", 1)[0] for lora, _ in loras for key in lora.layers} - {"unet"}
    networks = {"unet": unet}
    for name in touched & set(present):
        networks[name] = present[name] if inplace else copy.deepcopy(present[name])
    merge_loras(networks, loras)
    return components.with_(**networks)

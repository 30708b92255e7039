"""ResAdapter checkpoints: finding, reading and checking them (``load_adapter``)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ResAdapterRTError
from .families import FAMILIES, ModelFamily, family_of_adapter_keys
from ..files import PICKLE_SUFFIXES, read_safetensors, read_tensor_pickle
from .hub import resolve_reference
from .lora import LoraWeights, read_lora_file

log = logging.getLogger(__name__)

LORA_FILE = "pytorch_lora_weights.safetensors"
NORM_FILE = "diffusion_pytorch_model.safetensors"
LEGACY_NORM_FILE = "groupnorm_state_dict.pt"

NO_ADAPTER = "none"  # export the model as it is (no LoRA, its own GroupNorm affines)
SAMPLER_CONV = re.compile(r"^(down_blocks\.\d+\.downsamplers|up_blocks\.\d+\.upsamplers)\.0\.conv$")
RESNET_NORM = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.resnets\.\d+\.norm[12]\.(weight|bias)$")


@dataclass
class ResAdapterWeights:
    """A loaded ResAdapter: LoRA on the sampler convs plus replacement ResNet GroupNorm affines."""

    lora: LoraWeights  # keys "unet.<sampler conv path>"
    norms: dict[str, torch.Tensor] | None  # diffusers UNet keys; None for LoRA-only releases
    family: ModelFamily | None  # None: ``--resadapter none``, which fits every model
    source: str
    files: list[Path] = field(default_factory=list)

    def describe(self) -> str:
        if self.source == NO_ADAPTER:
            return "no ResAdapter (--resadapter none): the model as it is"
        ranks = sorted({layer.rank for layer in self.lora.layers.values()})
        scales = sorted({round(layer.scale, 6) for layer in self.lora.layers.values()})
        norms = f"{len(self.norms)} norm tensors" if self.norms else "no norm weights"
        return (
            f"ResAdapter for {self.family.display_name} from {self.source}: {len(self.lora.layers)} sampler-conv "
            f"LoRA layers (rank {'/'.join(map(str, ranks))}, scale {'/'.join(map(str, scales))}), {norms}"
        )


def _find_file(directory: Path, preferred: str, suffix: str, hint: str) -> Path | None:
    """The preferred file name, else the single file with ``suffix`` whose name contains ``hint``."""
    if (directory / preferred).is_file():
        return directory / preferred
    candidates = sorted(p for p in directory.glob(f"*{suffix}") if hint in p.name)
    if len(candidates) > 1:
        names = ", ".join(p.name for p in candidates)
        raise ResAdapterRTError(f"{directory}: several candidate files ({names}); pass the one you mean explicitly")
    return candidates[0] if candidates else None


def _read_norms(path: Path) -> dict[str, torch.Tensor]:
    state = read_tensor_pickle(path) if path.suffix in PICKLE_SUFFIXES else read_safetensors(path)
    state = {k.removeprefix("unet."): v for k, v in state.items()}
    foreign = [k for k in state if not RESNET_NORM.match(k)]
    if foreign:
        raise ResAdapterRTError(
            f"{path}: key {foreign[0]!r} is not a ResNet GroupNorm weight (expected e.g. "
            "'down_blocks.0.resnets.0.norm1.weight'); is this a full UNet rather than a ResAdapter norm file?"
        )
    if not state:
        raise ResAdapterRTError(f"{path}: contains no tensors")
    return state


def load_adapter(
    source: str | Path | None = None,
    *,
    lora_file: str | Path | None = None,
    norm_file: str | Path | None = None,
) -> ResAdapterWeights:
    """Load a ResAdapter from a directory, a hub reference, explicit files, or a built-in tiny name.

    ``source`` may be a release directory (``pytorch_lora_weights.safetensors`` plus
    ``diffusion_pytorch_model.safetensors`` or ``groupnorm_state_dict.pt``), a single LoRA file,
    ``owner/repo/subfolder`` on the hub, ``tiny-sd15`` / ``tiny-sdxl`` / ``mini-sd15`` (built in), or
    ``none`` (no adapter: merging it changes nothing).
    """
    if source is None and lora_file is None:
        raise ResAdapterRTError("no ResAdapter given: pass a directory, a hub id, or the LoRA file")
    label = str(source) if source is not None else str(lora_file)
    if label == NO_ADAPTER and lora_file is None:
        return ResAdapterWeights(lora=LoraWeights({}, NO_ADAPTER), norms=None, family=None, source=NO_ADAPTER)
    if source is not None and str(source) in ("tiny-sd15", "tiny-sdxl"):
        from .tiny import tiny_adapter_dir

        source = tiny_adapter_dir(FAMILIES[str(source).removeprefix("tiny-")])
    elif source is not None and str(source) == "mini-sd15":
        from .mini import adapter_dir

        source = adapter_dir()
    if source is not None:
        path = resolve_reference(source, "ResAdapter", patterns=["*.safetensors", "*.json", LEGACY_NORM_FILE])
        if path.is_dir():
            lora_file = lora_file or _find_file(path, LORA_FILE, ".safetensors", "lora")
            if lora_file is None:
                raise ResAdapterRTError(f"{path}: no {LORA_FILE} (or other *lora*.safetensors) in this directory")
            if norm_file is None:
                norm_file = _find_file(path, NORM_FILE, ".safetensors", "diffusion_pytorch_model")
            if norm_file is None and (path / LEGACY_NORM_FILE).is_file():
                norm_file = path / LEGACY_NORM_FILE
        else:
            lora_file = path
    lora = read_lora_file(Path(lora_file))
    return _assemble(lora, Path(norm_file) if norm_file else None, label)


def _assemble(lora: LoraWeights, norm_file: Path | None, label: str) -> ResAdapterWeights:
    others = [k for k in lora.layers if not k.startswith("unet.") or not SAMPLER_CONV.match(k[5:])]
    if others:
        raise ResAdapterRTError(
            f"{lora.source}: LoRA layer {others[0]!r} is not on a UNet down/upsampler conv, so this is not a "
            "ResAdapter; pass general LoRAs with --lora FILE:WEIGHT"
        )
    norms = _read_norms(norm_file) if norm_file else None
    if norms is None:
        log.warning("%s: no norm file found; loading the resolution LoRA alone (early interpolation releases ship none)", label)
    modules = [k[5:] for k in lora.layers]
    by_lora = family_of_adapter_keys(modules, [])
    by_norms = family_of_adapter_keys([], norms or {})
    if by_lora and by_norms and by_lora != by_norms:
        raise ResAdapterRTError(
            f"{label}: the LoRA file is for {by_lora.display_name} but the norm file is for {by_norms.display_name}; "
            "the two files come from different adapters"
        )
    family = by_lora or by_norms
    files = [Path(lora.source)] + ([norm_file] if norm_file else [])
    return ResAdapterWeights(lora=lora, norms=norms, family=family, source=label, files=files)


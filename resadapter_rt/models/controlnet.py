"""Loading ControlNets (diffusers directory, single ``.safetensors`` file + config, hub id, or the built-in tiny
``tiny-sd15`` / ``tiny-sdxl`` with seeded random weights) and recording them.

A ControlNet is never merged with the ResAdapter (the official code applies the adapter to the UNet
only); it only has to match the UNet's layout so its residuals can be added to the UNet's skips.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ResAdapterRTError, first_line
from ..files import PICKLE_SUFFIXES
from .hub import resolve_reference
from .provenance import check_same_files, recorded_path, files_sha256, source_entry

_HUB_PATTERNS = ["config.json", "diffusion_pytorch_model.safetensors"]
DIFFUSERS_PREFIXES = ("controlnet_cond_embedding.", "controlnet_down_blocks.", "conv_in.")
ORIGINAL_PREFIXES = ("control_model.", "input_hint_block.", "input_blocks.", "zero_convs.")


@dataclass
class LoadedControlNet:
    """One ControlNet as loaded: the reference as given, the local path it came from, its files' hashes."""

    source: str
    path: Path
    model: Any  # diffusers ControlNetModel
    files: dict[str, str]

    def record(self) -> dict:
        """The manifest entry: source, kind, absolute path, file hashes, conditioning channels."""
        return {**source_entry(self.source), "files": self.files,
                "conditioning_channels": int(self.model.config.conditioning_channels)}



def _from_directory(directory: Path) -> Any:
    from diffusers import ControlNetModel

    config = directory / "config.json"
    if not config.is_file() or "ControlNetModel" not in config.read_text():
        raise ResAdapterRTError(f"{directory}: not a diffusers ControlNet directory (no config.json of a ControlNetModel)")
    try:
        return ControlNetModel.from_pretrained(directory)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise ResAdapterRTError(f"{directory}: could not load the ControlNet ({first_line(exc)}); "
                                "is a weight or config file missing or truncated?") from None


def _from_single_file(path: Path) -> tuple[Any, dict[str, str]]:
    """A diffusers-key state dict with ``config.json`` beside it, or an original-format (lllyasviel) file."""
    from diffusers import ControlNetModel
    from safetensors import safe_open
    from safetensors.torch import load_file

    if path.suffix in PICKLE_SUFFIXES:
        raise ResAdapterRTError(f"{path}: pickle checkpoints can run arbitrary code and are not loaded; use the .safetensors release")
    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
    except Exception:
        raise ResAdapterRTError(f"{path}: not a readable safetensors ControlNet; is it truncated?") from None
    config = path.parent / "config.json"
    files = files_sha256(path) | (files_sha256(config) if config.is_file() else {})
    if any(k.startswith(DIFFUSERS_PREFIXES) for k in keys):
        if not config.is_file():
            raise ResAdapterRTError(f"{path}: a diffusers-format ControlNet file needs its config.json in the same directory")
        try:
            model = ControlNetModel.from_config(json.loads(config.read_text()))
            model.load_state_dict(load_file(str(path)), strict=True)
        except (RuntimeError, ValueError, json.JSONDecodeError) as exc:
            raise ResAdapterRTError(f"{path}: does not match {config} ({first_line(exc)}); pass the config.json "
                                    "released with these weights") from None
        return model.eval(), files
    if any(k.startswith(ORIGINAL_PREFIXES) for k in keys):
        try:
            model = ControlNetModel.from_single_file(str(path), config=str(path.parent) if config.is_file() else None)
        except Exception as exc:
            raise ResAdapterRTError(f"{path}: could not load this original-format ControlNet ({first_line(exc)}); offline, put "
                                    "the diffusers config.json of its architecture beside it") from None
        return model.eval(), files
    raise ResAdapterRTError(f"{path}: no ControlNet weights found (neither diffusers nor original key names)")


def load_controlnet(reference: str | Path) -> LoadedControlNet:
    """A ControlNet from a diffusers directory, a ``.safetensors`` file (config.json beside it), a hub id or a tiny built-in."""
    from .components import TINY_MODELS

    if str(reference) in TINY_MODELS:
        from .families import FAMILIES
        from .tiny import tiny_controlnet_dir

        path = tiny_controlnet_dir(FAMILIES[str(reference).removeprefix("tiny-")])
    else:
        path = resolve_reference(reference, "ControlNet", patterns=_HUB_PATTERNS)
    if path.is_file():
        model, files = _from_single_file(path)
    else:
        model, files = _from_directory(path).eval(), files_sha256(path)
    if int(model.config.conditioning_channels) != 3:
        raise ResAdapterRTError(f"{reference}: this ControlNet takes {model.config.conditioning_channels}-channel conditioning; "
                                "only RGB (3-channel) control images are supported")
    return LoadedControlNet(source=str(reference), path=path, model=model, files=files)


def check_controlnet_fits(controlnet: LoadedControlNet, unet: Any) -> None:
    """The ControlNet's residuals must have the UNet's channel layout and conditioning."""
    mine, theirs = controlnet.model.config, unet.config
    for key in ("block_out_channels", "cross_attention_dim", "addition_embed_type"):
        a, b = mine.get(key), theirs.get(key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            raise ResAdapterRTError(f"{controlnet.source}: this ControlNet's {key} is {a}, the model's UNet has {b}; "
                                    "use a ControlNet trained for this model family")


def recorded_controlnets(entries: list[dict], export_dir: Path) -> list[str]:
    """The local paths (or hub ids) of a manifest's ControlNets, their files checked against the recorded hashes."""
    references = []
    for entry in entries:
        reference = recorded_path(entry, Path(export_dir), "ControlNet")
        path = Path(reference)
        if path.exists():
            current = files_sha256(path)
            if path.is_file() and (path.parent / "config.json").is_file():
                current |= files_sha256(path.parent / "config.json")
            check_same_files(entry["files"], current, "ControlNet", reference)
        references.append(reference)
    return references


def load_controlnets(references: tuple[str, ...] | list[str], unet: Any) -> list[LoadedControlNet]:
    """Every ControlNet of an export, each checked to fit ``unet``."""
    loaded = [load_controlnet(reference) for reference in references]
    for controlnet in loaded:
        check_controlnet_fits(controlnet, unet)
    return loaded

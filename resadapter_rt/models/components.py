"""Loading personalized Stable Diffusion models: pipeline dirs, UNet dirs, single files, hub ids."""

from __future__ import annotations

import importlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..errors import ResAdapterRTError
from .families import FAMILIES, SDXL, ModelFamily, family_of_unet_config
from ..files import PICKLE_SUFFIXES
from .hub import resolve_reference

log = logging.getLogger(__name__)

TINY_MODELS = ("tiny-sd15", "tiny-sdxl")
BUILTIN_MODELS = (*TINY_MODELS, "mini-sd15")  # mini-sd15: trained weights shipped in the package (miniature/)
_HUB_PATTERNS = ["model_index.json", "*/config.json", "*/*.txt", "*/*.json", "*/model.safetensors", "*/diffusion_pytorch_model.safetensors"]
_LIBRARIES = ("diffusers", "transformers")
_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass
class PipelineComponents:
    """The networks and helpers of one SD1.5/SDXL pipeline; missing ones are None."""

    family: ModelFamily
    source: str
    unet: Any
    vae: Any = None
    text_encoder: Any = None
    text_encoder_2: Any = None
    tokenizer: Any = None
    tokenizer_2: Any = None
    scheduler: Any = None
    # SDXL pipelines use zero embeddings for an absent negative prompt unless the model says otherwise.
    force_zeros_for_empty_prompt: bool | None = None
    path: Path | None = None  # the local file or directory it was loaded from (None: built in)
    training_size: int | None = None  # pixels; None: the family's (a pipeline dir may declare it in resadapter_rt.json)
    pixel_range: tuple[int, int] | None = None  # pixels per side its exports serve; None: the family's

    def __post_init__(self) -> None:
        if self.force_zeros_for_empty_prompt is None:
            self.force_zeros_for_empty_prompt = self.family is SDXL
        if self.training_size is None:
            self.training_size = self.family.training_size
        if self.pixel_range is None:
            self.pixel_range = self.family.pixel_range

    def networks(self) -> dict[str, Any]:
        """Present torch modules by component name (the keys LoRA files use)."""
        names = ("unet", "vae", "text_encoder", "text_encoder_2")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def with_(self, **changes: Any) -> "PipelineComponents":
        return replace(self, **changes)

    def to_diffusers(self, scheduler: Any = None) -> Any:
        """A diffusers ``StableDiffusion(XL)Pipeline`` over these components (no safety checker)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        kwargs = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                      scheduler=scheduler if scheduler is not None else self.scheduler)
        if self.family is SDXL:
            return StableDiffusionXLPipeline(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
                                             force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt, **kwargs)
        return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False, **kwargs)


def _load_class(library: str, class_name: str):
    return getattr(importlib.import_module(library), class_name)


def _read_model_index(directory: Path) -> dict:
    try:
        index = json.loads((directory / "model_index.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResAdapterRTError(f"{directory / 'model_index.json'}: not valid JSON ({exc}); "
                                "restore it from the model's release") from None
    if not isinstance(index, dict):
        raise ResAdapterRTError(f"{directory / 'model_index.json'}: expected a JSON object, found {type(index).__name__}")
    return index


def _load_component(directory: Path, name: str, spec: Any) -> Any:
    """One component by the (library, class) that model_index.json names, as a one-line error if it cannot load."""
    if not isinstance(spec, (list, tuple)) or len(spec) != 2 or not all(isinstance(s, str) for s in spec):
        raise ResAdapterRTError(f"{directory / 'model_index.json'}: entry '{name}' should be [library, class], got {spec!r}")
    library, class_name = spec
    if library not in _LIBRARIES:
        raise ResAdapterRTError(f"{directory / 'model_index.json'}: '{name}' comes from library {library!r}; "
                                f"only {', '.join(_LIBRARIES)} components are loaded")
    try:
        cls = _load_class(library, class_name)
    except (ImportError, AttributeError):
        raise ResAdapterRTError(f"{directory / 'model_index.json'}: '{name}' names {library}.{class_name}, "
                                f"which {library} does not have") from None
    try:
        return cls.from_pretrained(directory / name)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ResAdapterRTError(f"{directory / name}: could not load the {name} ({reason}); "
                                "is a weight or config file missing or truncated?") from None


def _load_pipeline_dir(directory: Path, label: str, unet_only: bool) -> PipelineComponents:
    index = _read_model_index(directory)
    loaded: dict[str, Any] = {}
    for name in ("unet",) if unet_only else _COMPONENTS:
        spec = index.get(name)
        if not spec or spec[0] is None:
            continue
        if not (directory / name).is_dir():
            raise ResAdapterRTError(f"{directory}: model_index.json lists '{name}' but the folder {name}/ is missing")
        loaded[name] = _load_component(directory, name, spec)
    if "unet" not in loaded:
        raise ResAdapterRTError(f"{directory}: this pipeline has no UNet (model_index.json lists none)")
    family = family_of_unet_config(loaded["unet"].config)
    force_zeros = index.get("force_zeros_for_empty_prompt")
    return PipelineComponents(family=family, source=label, **loaded,
                              force_zeros_for_empty_prompt=None if force_zeros is None else bool(force_zeros))


def _load_single_file(path: Path, label: str, config: str | None) -> PipelineComponents:
    from safetensors import safe_open

    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
    except Exception:
        raise ResAdapterRTError(f"{path}: not a readable safetensors checkpoint; is it truncated?") from None
    if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
        raise ResAdapterRTError(
            f"{path}: this is a bare diffusers UNet state dict; pass the directory that holds it and its config.json"
        )
    is_sdxl = any(k.startswith("conditioner.embedders.1") for k in keys)
    pipeline_class = StableDiffusionXLPipeline if is_sdxl else StableDiffusionPipeline
    try:
        pipe = pipeline_class.from_single_file(str(path), config=config)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ResAdapterRTError(
            f"{path}: could not load this single-file checkpoint ({reason}); offline, pass --config with a local "
            "diffusers pipeline directory of the same architecture"
        ) from None
    kwargs = {n: getattr(pipe, n, None) for n in _COMPONENTS}
    force_zeros = pipe.config.get("force_zeros_for_empty_prompt") if is_sdxl else None
    return PipelineComponents(family=SDXL if is_sdxl else FAMILIES["sd15"], source=label, **kwargs,
                              force_zeros_for_empty_prompt=force_zeros)


def load_components(model: str | Path, *, unet_only: bool = False, config: str | None = None) -> PipelineComponents:
    """Load a personalized model.

    ``model`` is ``tiny-sd15`` / ``tiny-sdxl`` / ``mini-sd15`` (built-in, offline), a diffusers pipeline directory
    (``model_index.json``), a UNet directory (``config.json`` of a UNet2DConditionModel), a single
    ``.safetensors`` checkpoint (Civitai style; ``config`` names the matching diffusers layout), or
    a hub id. With ``unet_only`` only the UNet is loaded.
    """
    label = str(model)
    if label in TINY_MODELS:
        from .tiny import tiny_pipeline_dir

        path = tiny_pipeline_dir(FAMILIES[label.removeprefix("tiny-")])
    elif label == "mini-sd15":
        from .mini import pipeline_dir

        path = pipeline_dir()
    else:
        path = resolve_reference(model, "model", patterns=_HUB_PATTERNS)
    components = _load_path(path, label, unet_only, config)
    if path.is_dir():
        from .mini import model_facts

        facts = model_facts(path)
        components = components.with_(training_size=facts.get("training_size", components.training_size),
                                      pixel_range=tuple(facts.get("pixel_range", components.pixel_range)))
    return components if label in BUILTIN_MODELS else components.with_(path=path)


def _load_path(path: Path, label: str, unet_only: bool, config: str | None) -> PipelineComponents:
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            raise ResAdapterRTError(
                f"{path}: pickle checkpoints can run arbitrary code and are not loaded; use the .safetensors release"
            )
        return _load_single_file(path, label, config)
    if (path / "model_index.json").is_file():
        return _load_pipeline_dir(path, label, unet_only)
    config_file = path / "config.json"
    if config_file.is_file() and "UNet2DConditionModel" in config_file.read_text():
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(path)
        return PipelineComponents(family=family_of_unet_config(unet.config), source=label, unet=unet)
    raise ResAdapterRTError(
        f"{path}: not a diffusers pipeline (no model_index.json) nor a UNet directory (no UNet config.json)"
    )


def load_unet(model: str | Path) -> Any:
    """Just the UNet of ``model`` (see ``load_components``)."""
    return load_components(model, unet_only=True).unet


__all__ = ["PipelineComponents", "load_components", "load_unet", "TINY_MODELS", "BUILTIN_MODELS"]

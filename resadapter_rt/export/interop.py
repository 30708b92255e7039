"""The files diffusers- and optimum-style ONNX loaders read, written beside our graphs.

optimum's ``ORTStableDiffusion(XL)Pipeline`` and diffusers' ``OnnxStableDiffusionPipeline`` load
a directory by its ``model_index.json`` (pipeline class, and the library/class of each component),
read each ONNX component's own ``config.json``, and load tokenizers by class name — where a
transformers 4.x ``CLIPTokenizer`` needs ``vocab.json`` and ``merges.txt``, which transformers
5 no longer writes. With these files a baked-alpha export is a drop-in model for them; a
dynamic-alpha export has an extra ``resadapter_alpha`` input those loaders do not feed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

NO_COMPONENT = [None, None]


def _class_of(obj: Any) -> list[str]:
    """[library, class name] as ``model_index.json`` records a component."""
    return [type(obj).__module__.split(".")[0], type(obj).__name__]


def model_index(components: Any, sdxl: bool) -> dict:
    """The pipeline config a diffusers ``save_pretrained`` would write for these components."""
    import diffusers

    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": NO_COMPONENT, "image_encoder": NO_COMPONENT,
        "scheduler": _class_of(components.scheduler), "text_encoder": _class_of(components.text_encoder),
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": _class_of(components.unet), "vae": _class_of(components.vae),
    }
    if sdxl:
        index |= {"text_encoder_2": _class_of(components.text_encoder_2), "tokenizer_2": ["transformers", "CLIPTokenizer"],
                  "force_zeros_for_empty_prompt": bool(components.force_zeros_for_empty_prompt)}
    else:
        index |= {"safety_checker": NO_COMPONENT, "requires_safety_checker": False}
    return index


def write_tokenizer_vocabulary(directory: Path) -> None:
    """``vocab.json`` + ``merges.txt`` from ``tokenizer.json``, for transformers 4.x's slow ``CLIPTokenizer``."""
    model = json.loads((directory / "tokenizer.json").read_text())["model"]
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model.get("merges") or []]
    (directory / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config.pop("backend", None)  # transformers 5 only; 4.x reads the class name
    config_path.write_text(json.dumps(config, indent=2))


def write_loader_files(directory: Path, components: Any, networks: dict[str, Any], sdxl: bool) -> None:
    """``model_index.json``, each component's ``config.json`` and 4.x-readable tokenizers under ``directory``."""
    (directory / "model_index.json").write_text(json.dumps(model_index(components, sdxl), indent=2))
    components.unet.save_config(directory / "unet")
    for name in ("vae_decoder", "vae_encoder"):
        if (directory / name).is_dir():
            components.vae.save_config(directory / name)
    for name in ("text_encoder", "text_encoder_2"):
        if (directory / name).is_dir():
            networks[name].config.to_json_file(directory / name / "config.json")
    for name in ("tokenizer", "tokenizer_2"):
        if (directory / name / "tokenizer.json").is_file():
            write_tokenizer_vocabulary(directory / name)


def interop_record(dynamic_alpha: bool) -> dict:
    """What the manifest says about other loaders."""
    return {
        "layout": "diffusers/optimum ONNX pipeline (model_index.json, component config.json)",
        "optimum_onnxruntime_drop_in": not dynamic_alpha,
        "note": ("the UNet takes an extra resadapter_alpha input that optimum and diffusers do not feed; "
                 "export with a baked --alpha for them") if dynamic_alpha else "loads as is",
    }

"""Loading IP-Adapters (h94 release format) and their CLIP image encoder, checking them and recording them.

An IP-Adapter file holds two state dicts: ``image_proj`` (image embedding -> extra cross-attention
tokens) and ``ip_adapter`` (``{i}.to_k_ip.weight`` / ``{i}.to_v_ip.weight`` for the UNet's i-th
attention processor, cross-attentions only). ``.safetensors`` files carry them as ``image_proj.*`` /
``ip_adapter.*`` keys; ``.bin`` files are a pickled nested dict, read with ``weights_only=True``.
diffusers' own converters (``UNet2DConditionModel._load_ip_adapter_weights``, what
``pipe.load_ip_adapter`` calls) turn them into attention processors. Like a ControlNet, an IP-Adapter
is never merged with the ResAdapter: it adds weights beside the UNet's, it does not change them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ResAdapterRTError, first_line
from ..files import PICKLE_SUFFIXES
from .hub import looks_like_hub_reference, resolve_reference
from .provenance import check_same_files, files_sha256, recorded_path, source_entry

SUFFIXES = (".safetensors", ".bin")
IMAGE_ENCODER_FOLDER = "image_encoder"  # diffusers' default: beside the IP-Adapter file (h94's models/image_encoder)
PLAIN, FULL_FACE, PLUS = "plain", "full-face", "plus"


@dataclass
class LoadedIPAdapter:
    """An IP-Adapter with its image encoder, as loaded, with what is needed to record and re-check them."""

    source: str
    path: Path
    state_dict: dict[str, dict[str, torch.Tensor]]  # {"image_proj": ..., "ip_adapter": ...}
    kind: str  # plain | full-face | plus
    encoder_source: str
    encoder_path: Path
    encoder: Any  # transformers CLIPVisionModelWithProjection
    feature_extractor: Any  # transformers CLIPImageProcessor
    files: dict[str, str] = field(default_factory=dict)
    encoder_files: dict[str, str] = field(default_factory=dict)

    @property
    def uses_hidden_states(self) -> bool:
        """Plus and full-face adapters take the encoder's penultimate hidden states, plain ones its projected embedding."""
        return self.kind != PLAIN

    @property
    def num_tokens(self) -> int:
        """Image tokens added to each cross-attention."""
        proj = self.state_dict["image_proj"]
        if self.kind == PLAIN:
            return proj["proj.weight"].shape[0] // proj["norm.weight"].shape[0]
        if self.kind == FULL_FACE:
            return image_token_count(self.encoder.config)
        return int(proj["latents"].shape[1])

    def embed_shape(self) -> tuple[int, ...]:
        """One image's embedding as the UNet takes it: ``(projection_dim,)`` or ``(tokens, hidden_size)``."""
        config = self.encoder.config
        if self.uses_hidden_states:
            return (image_token_count(config), int(config.hidden_size))
        return (int(config.projection_dim),)

    def record(self) -> dict:
        """The manifest entry: sources, kinds, absolute paths and file hashes of adapter and encoder."""
        return {**source_entry(self.source), "files": self.files, "variant": self.kind, "num_tokens": self.num_tokens,
                "image_embeds": "penultimate hidden states" if self.uses_hidden_states else "projected image embedding",
                "image_size": int(self.encoder.config.image_size),
                "image_encoder": {**source_entry(self.encoder_source), "files": self.encoder_files}}


def image_token_count(vision_config: Any) -> int:
    """CLIP vision tokens: one per patch plus the class token (257 for ViT-H/14 at 224 px)."""
    return (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2 + 1



def read_ip_adapter_file(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` from a ``.safetensors`` or a tensors-only ``.bin`` pickle."""
    if not path.is_file():
        raise ResAdapterRTError(f"{path}: no such IP-Adapter file")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
        try:
            with safe_open(str(path), "pt") as handle:
                for key in handle.keys():
                    part, _, name = key.partition(".")
                    if part in state:
                        state[part][name] = handle.get_tensor(key)
        except Exception as exc:
            raise ResAdapterRTError(f"{path}: not a readable safetensors file ({first_line(exc)}); is it truncated?") from None
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for a pickle that carries code, EOFError for a truncated one
            raise ResAdapterRTError(f"{path}: refused to load: it is not a plain tensor pickle readable with "
                                    f"weights_only=True ({first_line(exc)}); use the .safetensors release") from None
        if not isinstance(state, dict) or not all(isinstance(state.get(k), dict) for k in ("image_proj", "ip_adapter")):
            raise ResAdapterRTError(f"{path}: not an IP-Adapter checkpoint (expected the dicts 'image_proj' and 'ip_adapter')")
        if not all(isinstance(v, torch.Tensor) for part in ("image_proj", "ip_adapter") for v in state[part].values()):
            raise ResAdapterRTError(f"{path}: its 'image_proj'/'ip_adapter' entries are not all tensors")
        state = {"image_proj": dict(state["image_proj"]), "ip_adapter": dict(state["ip_adapter"])}
    else:
        raise ResAdapterRTError(f"{path}: an IP-Adapter is a .safetensors or .bin file (e.g. ip-adapter_sd15.safetensors)")
    if not state["image_proj"] or not state["ip_adapter"]:
        raise ResAdapterRTError(f"{path}: no IP-Adapter weights found (no image_proj.* and ip_adapter.* keys)")
    return state


def adapter_kind(state: dict[str, dict[str, torch.Tensor]], path: Path) -> str:
    """plain, full-face or plus, decided by the projection's keys as diffusers' converter does; FaceID refused."""
    proj = state["image_proj"]
    if "proj.weight" in proj:
        return PLAIN
    if "proj.3.weight" in proj:
        return FULL_FACE
    if "latents" in proj:
        return PLUS
    raise ResAdapterRTError(f"{path}: a FaceID IP-Adapter (it needs face embeddings from insightface and a LoRA), which "
                            "is not supported; use ip-adapter_sd15, ip-adapter-plus_sd15, ip-adapter-full-face_sd15 or ip-adapter_sdxl")


def default_image_encoder(reference: str | Path) -> str:
    """Where an IP-Adapter's image encoder is looked for: ``image_encoder/`` beside the file (as diffusers looks), or
    the built-in tiny adapter's own (its name)."""
    from .components import TINY_MODELS

    return str(reference) if str(reference) in TINY_MODELS else str(Path(reference).parent / IMAGE_ENCODER_FOLDER)


def _builtin(reference: str | Path) -> Path | None:
    """The built-in tiny IP-Adapter file for ``tiny-sd15`` / ``tiny-sdxl`` (seeded random weights), else None."""
    from .components import TINY_MODELS

    if str(reference) not in TINY_MODELS:
        return None
    from .families import FAMILIES
    from .tiny import tiny_ip_adapter_file

    return tiny_ip_adapter_file(FAMILIES[str(reference).removeprefix("tiny-")])


def _resolve_adapter_file(reference: str | Path) -> Path:
    """A local file, ``owner/repo/folder/file.safetensors`` on the hub (fetched with the folder's image_encoder/),
    or a tiny built-in."""
    builtin = _builtin(reference)
    if builtin is not None:
        return builtin
    path = Path(reference).expanduser()
    if path.exists():
        return path
    text = str(reference)
    if looks_like_hub_reference(text) and text.endswith(SUFFIXES) and text.count("/") >= 2:
        folder, _, name = text.rpartition("/")
        return resolve_reference(folder, "IP-Adapter", patterns=[name, f"{IMAGE_ENCODER_FOLDER}/*"]) / name
    raise ResAdapterRTError(f"{text}: no such IP-Adapter file (expected a local .safetensors/.bin file, or a hub path "
                            "such as h94/IP-Adapter/models/ip-adapter_sd15.safetensors)")


def _load_encoder(reference: str | Path) -> tuple[Path, Any]:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    builtin = _builtin(reference)
    path = builtin.parent / IMAGE_ENCODER_FOLDER if builtin is not None else \
        resolve_reference(reference, "CLIP image encoder", patterns=["config.json", "model.safetensors"])
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise ResAdapterRTError(f"{path}: not an image encoder directory (a CLIPVisionModelWithProjection's config.json and "
                                "model.safetensors, e.g. h94/IP-Adapter's models/image_encoder)")
    try:
        if "projection_dim" not in json.loads(config.read_text()):
            raise ValueError("its config.json has no projection_dim")
        CLIPVisionConfig.from_pretrained(path)
    except (ValueError, OSError, json.JSONDecodeError) as exc:
        raise ResAdapterRTError(f"{path}: not a CLIPVisionModelWithProjection ({first_line(exc)})") from None
    if not (path / "model.safetensors").is_file():
        raise ResAdapterRTError(f"{path}: no model.safetensors; pickled weights (pytorch_model.bin) are not loaded, "
                                "use the .safetensors release of the image encoder")
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(path, use_safetensors=True)
    except Exception as exc:
        raise ResAdapterRTError(f"{path}: could not load the image encoder ({first_line(exc)}); is a file truncated?") from None
    return path, encoder.eval()


def _feature_extractor(encoder_path: Path, model_path: Path | None, image_size: int) -> Any:
    """The CLIP preprocessing diffusers uses: the model's own ``feature_extractor/`` if it has one, else a
    ``CLIPImageProcessor`` at the encoder's image size (what ``load_ip_adapter`` registers)."""
    from transformers import CLIPImageProcessor

    for directory in ([model_path / "feature_extractor"] if model_path else []) + [encoder_path]:
        if (directory / "preprocessor_config.json").is_file():
            return CLIPImageProcessor.from_pretrained(directory)
    return CLIPImageProcessor(size=image_size, crop_size=image_size)


def load_ip_adapter(reference: str | Path, image_encoder: str | Path | None = None,
                    model_path: Path | None = None) -> LoadedIPAdapter:
    """An IP-Adapter file and its image encoder (default: ``image_encoder/`` beside the file, as diffusers looks)."""
    path = _resolve_adapter_file(reference)
    state = read_ip_adapter_file(path)
    kind = adapter_kind(state, path)
    if image_encoder is None and _builtin(reference) is not None:
        image_encoder = default_image_encoder(reference)
    if image_encoder is None:
        beside = path.parent / IMAGE_ENCODER_FOLDER
        if not beside.is_dir():
            raise ResAdapterRTError(f"{reference}: an IP-Adapter needs its CLIP image encoder and there is no {beside}; "
                                    "pass --image-encoder DIR (h94/IP-Adapter: models/image_encoder for SD1.5, "
                                    "sdxl_models/image_encoder for SDXL)")
        image_encoder = beside
    encoder_path, encoder = _load_encoder(image_encoder)
    loaded = LoadedIPAdapter(source=str(reference), path=path, state_dict=state, kind=kind, encoder_source=str(image_encoder),
                             encoder_path=encoder_path, encoder=encoder,
                             feature_extractor=_feature_extractor(encoder_path, model_path, int(encoder.config.image_size)),
                             files=files_sha256(path), encoder_files=files_sha256(encoder_path))
    _check_encoder_fits(loaded)
    return loaded


def _check_encoder_fits(loaded: LoadedIPAdapter) -> None:
    """The projection's input width must be what the encoder gives (projected embedding or hidden states)."""
    proj = loaded.state_dict["image_proj"]
    wanted = {PLAIN: lambda: proj["proj.weight"].shape[1], FULL_FACE: lambda: proj["proj.0.weight"].shape[1],
              PLUS: lambda: proj["proj_in.weight"].shape[1]}[loaded.kind]()
    given = loaded.embed_shape()[-1]
    if int(wanted) != int(given):
        what = "hidden states" if loaded.uses_hidden_states else "image embeddings"
        raise ResAdapterRTError(f"{loaded.encoder_source}: this image encoder gives {what} of width {given}, the IP-Adapter "
                                f"{loaded.source} expects {wanted}; use the encoder released with it (ViT-H-14 for SD1.5 "
                                "adapters, ViT-bigG-14 for ip-adapter_sdxl)")


def _cross_attention_processors(unet: Any) -> list[str]:
    return [name for name in unet.attn_processors if not name.endswith("attn1.processor")]


def check_ip_adapter_fits(loaded: LoadedIPAdapter, unet: Any) -> None:
    """The adapter must have one key/value pair per cross-attention of ``unet``, of its widths."""
    cross_dim = int(unet.config.cross_attention_dim)
    names = _cross_attention_processors(unet)
    layers = loaded.state_dict["ip_adapter"]
    keys = [k for k in layers if k.endswith("to_k_ip.weight")]
    adapter_dim = int(layers[keys[0]].shape[1]) if keys else None
    pairs = len(keys)
    if adapter_dim != cross_dim or pairs != len(names):
        family = {768: " (SD1.5)", 2048: " (SDXL)"}.get(adapter_dim, "")
        raise ResAdapterRTError(f"{loaded.source}: this IP-Adapter is for a UNet with {pairs} cross-attentions of width "
                                f"{adapter_dim}{family}; the model's UNet has {len(names)} of width {cross_dim}; "
                                "use an IP-Adapter trained for this model family")


def apply_ip_adapter(unet: Any, loaded: LoadedIPAdapter) -> None:
    """Install the IP-Adapter's attention processors and image projection into ``unet`` (diffusers' converter).

    Each processor's scale is 1.0 here; ``export/ip_adapter.py::attach_ip_adapter`` bakes it or makes it a runtime input.
    """
    state = {part: {k: v.float() for k, v in loaded.state_dict[part].items()} for part in ("image_proj", "ip_adapter")}
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its "modules to keep in float32" notice is about from_pretrained dtypes
    try:
        unet._load_ip_adapter_weights([state], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError) as exc:
        raise ResAdapterRTError(f"{loaded.source}: does not fit the model's UNet ({first_line(exc)}); use an IP-Adapter "
                                "trained for this model family") from None
    finally:
        diffusers_logging.set_verbosity(verbosity)


def recorded_ip_adapter(entry: dict, export_dir: Path) -> tuple[str, str]:
    """(IP-Adapter file, image encoder) of a manifest, their files checked against the recorded hashes."""
    adapter = recorded_path(entry, Path(export_dir), "IP-Adapter")
    encoder = recorded_path(entry["image_encoder"], Path(export_dir), "IP-Adapter image encoder")
    for reference, files, what in ((adapter, entry["files"], "IP-Adapter"),
                                   (encoder, entry["image_encoder"]["files"], "IP-Adapter image encoder")):
        if Path(reference).exists():
            check_same_files(files, files_sha256(Path(reference)), what, reference)
    return adapter, encoder


SCALE_RANGE = (0.0, 2.0)


def parse_ip_adapter_scale(value: Any, what: str = "ip_adapter_scale") -> float:
    """A scale in [0, 2] (diffusers' ``set_ip_adapter_scale``; the authors show 0.3-1.0), or a one-line error."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = float("nan")
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:  # NaN fails too
        raise ResAdapterRTError(f"{what} {value!r} is not a number in [{SCALE_RANGE[0]:g}, {SCALE_RANGE[1]:g}]; "
                                "use e.g. 0.6 (0 turns the image prompt off)")
    return scale

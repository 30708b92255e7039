"""``export_pipeline``: merged pipeline -> ONNX with dynamic batch/height/width, validated in ONNX Runtime."""

from __future__ import annotations

import datetime
import json
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..models.adapter import NO_ADAPTER, load_adapter
from .dynamic_alpha import attach_lora_branches
from ..errors import ResAdapterRTError
from ..models.families import SDXL
from ..files import atomic_directory, onnx_artifact_sha256, read_json_object
from ..models.lora import read_lora_file
from ..models.merge import merge_adapter, merge_loras, parse_alpha, parse_lora_spec
from ..models.components import load_components
from .interop import interop_record, write_loader_files
from .graph import EXTERNAL_DATA_SUFFIX, cleanup, detach_weights, group_norm_counts, save
from .ort_fusion import fuse_for_cuda
from .precision import half_precision
from .unet import IPAdapterInputs, unet_export_module
from .ip_adapter import attach_ip_adapter, image_encoder_job
from .vae_encoder import vae_encoder_job
from ..models.controlnet import load_controlnets
from ..models.ip_adapter import check_ip_adapter_fits, load_ip_adapter, parse_ip_adapter_scale
from .specs import (ComponentSpec, TextEncoderForExport, VaeDecoderForExport, text_encoder_spec,
                         upsample_sizes_from_skips, vae_decoder_spec)
from ..models.provenance import merge_record

log = logging.getLogger(__name__)

OPSET = 17  # the TorchScript exporter writes GroupNorm as InstanceNorm: fastest on ORT CPU, native in TensorRT
TARGETS = ("cpu", "tensorrt", "cuda")
GROUP_NORM_FORM = {"cpu": "InstanceNormalization pattern (opset 17)",
                   "cuda": "com.microsoft.GroupNorm (+SiLU), onnxruntime.transformers fusion"}
MAX_RELATIVE_ERROR = {"fp32": 1e-3, "fp16": 2e-2}  # fp16 graphs are compared with the fp32 PyTorch model
DTYPES = tuple(MAX_RELATIVE_ERROR)
# Off-trace validation sizes in pixels (width, height, batch): a non-multiple of 64, aspect 0.28 and 3.5.
VALIDATION_SIZES = ((328, 200, 2), (1000, 600, 1), (280, 1000, 1), (1008, 288, 1))


def parse_validation_sizes(text: str) -> tuple[tuple[int, int, int], ...]:
    """``328x200x2,1000x600`` -> ((328, 200, 2), (1000, 600, 1)): off-trace sizes (WxH[xBATCH]) to validate at."""
    sizes = []
    for part in text.split(","):
        fields = part.strip().lower().split("x")
        if len(fields) not in (2, 3) or not all(f.isdigit() and int(f) > 0 for f in fields):
            raise ResAdapterRTError(f"--validation-sizes: {part.strip()!r} is not WIDTHxHEIGHT[xBATCH]; "
                                    f"write e.g. 328x200x2,1000x600 (default {','.join('x'.join(map(str, s)) for s in VALIDATION_SIZES)})")
        sizes.append((int(fields[0]), int(fields[1]), int(fields[2]) if len(fields) == 3 else 1))
    return tuple(sizes)


MANIFEST_FORMAT = "resadapter-rt/export"
MANIFEST_VERSION = 2  # 2: text encoders take int32 input_ids and use optimum's output names


@dataclass
class ExportOptions:
    """What to export and how; ``alpha`` is a number (baked) or ``"dynamic"``."""

    model: str
    resadapter: str
    alpha: float | str = 1.0
    loras: tuple[str, ...] = ()
    dtype: str = "fp32"
    target: str = "cpu"
    config: str | None = None
    validation_sizes: tuple[tuple[int, int, int], ...] = VALIDATION_SIZES
    controlnets: tuple[str, ...] = ()  # folded into the UNet graph (export/controlnet.py)
    vae_encoder: bool = False  # also export the VAE encoder (image-to-image; export/vae_encoder.py)
    ip_adapter: str | None = None  # an IP-Adapter file, inside the UNet graph (export/ip_adapter.py)
    image_encoder: str | None = None  # its CLIP image encoder (default: image_encoder/ beside the file)
    ip_adapter_scale: float | str = "dynamic"  # a runtime input, or baked at a number

    def checked(self) -> "ExportOptions":
        if self.target not in TARGETS:
            raise ResAdapterRTError(f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}")
        if self.dtype not in DTYPES:
            raise ResAdapterRTError(f"unknown dtype {self.dtype!r}; choose fp32 or fp16")
        alpha = self.alpha if str(self.alpha) == "dynamic" else parse_alpha(self.alpha)
        if alpha == "dynamic" and self.resadapter == NO_ADAPTER:
            raise ResAdapterRTError("--alpha dynamic needs a ResAdapter, but --resadapter is none (the model as it is); "
                                    "leave --alpha out, or name an adapter")
        for width, height, _ in self.validation_sizes:
            if width % 8 or height % 8:
                raise ResAdapterRTError(f"validation size {width}x{height} is not a multiple of 8 px")
        ip_scale = self.ip_adapter_scale
        if self.ip_adapter is None and (self.image_encoder is not None or str(ip_scale) != "dynamic"):
            given = "--image-encoder" if self.image_encoder is not None else "--ip-adapter-scale"
            raise ResAdapterRTError(f"{given} needs --ip-adapter FILE (the IP-Adapter whose encoder or scale it sets)")
        if str(ip_scale) != "dynamic":
            ip_scale = parse_ip_adapter_scale(ip_scale, "--ip-adapter-scale")
            if ip_scale == 0:
                raise ResAdapterRTError("--ip-adapter-scale 0 would export the UNet without its IP-Adapter; bake a scale "
                                        "above 0, or keep it dynamic (the default) and pass 0 at generation time")
        return ExportOptions(**{**self.__dict__, "alpha": alpha, "ip_adapter_scale": ip_scale})


def _export_one(module: nn.Module, spec: ComponentSpec, example: dict, path: Path) -> onnx.ModelProto:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name("raw")
    raw.mkdir()
    args = tuple(example[name] for name in spec.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks are expected: shapes stay dynamic
        torch.onnx.export(module, args, str(raw / "model.onnx"), dynamo=False, opset_version=OPSET,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
    # Weights never pass through memory again: torch wrote them past 2 GB, the rest go to files one by one,
    # the graph is cleaned without them and the final file is written by streaming them.
    model = onnx.load(str(raw / "model.onnx"), load_external_data=False)
    before = group_norm_counts(model)
    weight_bytes = detach_weights(model, raw)
    model = cleanup(model)
    save(model, path, raw, weight_bytes)
    del model
    for item in raw.iterdir():
        item.unlink()
    raw.rmdir()
    return before


def _reference_outputs(module: nn.Module, spec: ComponentSpec, cases: Iterable[dict]) -> list[tuple[torch.Tensor, ...]]:
    """The fp32 PyTorch module's outputs on each validation case (computed before its weights change or go)."""
    outputs = []
    for case in cases:
        with torch.no_grad():
            expected = module(*(case["inputs"][name] for name in spec.inputs))
        outputs.append(expected if isinstance(expected, tuple) else (expected,))
    return outputs


def _shares_weights(module: nn.Module, others: Iterable[nn.Module]) -> bool:
    """Whether any of ``others`` holds one of ``module``'s parameters (e.g. the VAE's decoder and encoder)."""
    mine = {id(p) for p in module.parameters()}
    return any(id(p) in mine for other in others for p in other.parameters())


def _release_weights(module: nn.Module) -> None:
    """Free the parameters and buffers of a module this export owns (moved to the storage-less meta device)."""
    module.to("meta")


def _validate(spec: ComponentSpec, path: Path, cases: Iterable[dict], references: list, limit: float) -> list[dict]:
    """ONNX Runtime (CPU) against the fp32 PyTorch outputs on each case; max abs and relative error."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Each shape runs once: no arena, whose power-of-two growth would hold e.g. 4 GiB for the 2.8 GB
    # attention scores of a full-size SD1.5 UNet at 1000x600 long after they are freed.
    options.enable_cpu_mem_arena = False
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    results = []
    for case, expected in zip(cases, references):
        inputs = case["inputs"]
        try:
            actual = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        except Exception as exc:  # onnxruntime raises its own exception types
            first = str(exc).strip().splitlines()[0][:200]
            raise ResAdapterRTError(
                f"{spec.name}: ONNX Runtime failed at {case['label']} ({first}); the graph does not generalise "
                "to this shape and was not written"
            ) from None
        abs_err = max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected))
        rel_err = max(float(np.abs(a - e.numpy()).max() / max(np.abs(e.numpy()).max(), 1e-12)) for a, e in zip(actual, expected))
        results.append({**case["label"], "max_abs_error": abs_err, "relative_error": rel_err})
        log.info("validated %s at %s: relative error %.2e", spec.name, case["label"], rel_err)
        if not rel_err <= limit:  # NaN fails too
            raise ResAdapterRTError(
                f"{spec.name}: ONNX Runtime output differs from PyTorch at {case['label']} (relative error "
                f"{rel_err:.2e} > {limit:.0e}); the export is not trustworthy and was not written"
            )
    return results


def _io_description(model_path: Path) -> dict:
    model = onnx.load(str(model_path), load_external_data=False)

    def describe(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
            out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}


def _unet_cases(spec: ComponentSpec, sizes, dynamic: bool) -> list[dict]:
    cases = []
    for index, (width, height, batch) in enumerate(sizes):
        tokens = 154 if index == 0 else 77  # one long-prompt case
        for alpha in ((1.0, 0.5) if dynamic and index == 0 else (1.0,)):
            label = {"width": width, "height": height, "batch": batch, "tokens": tokens}
            if dynamic:
                label["alpha"] = alpha
            cases.append({"label": label, "inputs": spec.example(batch, height // 8, width // 8, tokens, seed=index, alpha=alpha)})
    return cases


def export_pipeline(options: ExportOptions, out: Path, force: bool = False, progress=print) -> dict:
    """Merge, export every component to ONNX under ``out``, validate, and write ``manifest.json``.

    A UNet-only ``model`` (a UNet directory) exports just the UNet.

    The directory appears only when everything succeeded (temporary directory + rename).
    Returns the manifest.
    """
    options = options.checked()
    with atomic_directory(Path(out), force=force) as tmp:  # checks ``out`` first, before any work
        return _export_into(tmp, options, progress)


def _export_into(tmp: Path, options: ExportOptions, progress) -> dict:
    """The work of ``export_pipeline``, written into the (temporary) directory ``tmp``."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # constant folding runs ORT; keep its notices out of the way
    started = time.perf_counter()
    dynamic = options.alpha == "dynamic"
    adapter = load_adapter(options.resadapter)
    loras = [(read_lora_file(Path(p)), w) for p, w in map(parse_lora_spec, options.loras)]
    components = load_components(options.model, config=options.config)
    sdxl = components.family is SDXL
    if options.vae_encoder and components.vae is None:
        raise ResAdapterRTError(f"--vae-encoder needs the model's VAE, but {options.model} is a UNet only; "
                                "export a whole pipeline directory or checkpoint for image-to-image")
    controlnets = load_controlnets(options.controlnets, components.unet)
    ip_adapter = None
    if options.ip_adapter is not None:
        ip_adapter = load_ip_adapter(options.ip_adapter, options.image_encoder,
                                     components.path if components.path and components.path.is_dir() else None)
        check_ip_adapter_fits(ip_adapter, components.unet)

    # The components were loaded here and are ours: merge in place instead of holding a second copy
    # (3.4 GB for a full-size SD1.5 UNet).
    unet = merge_adapter(components.unet, adapter, 0.0 if dynamic else options.alpha, inplace=True)
    alpha_source = attach_lora_branches(unet, adapter) if dynamic else None
    networks = {"unet": unet}
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(components, name) is not None:
            networks[name] = getattr(components, name)
    merge_loras(networks, loras)
    dynamic_ip = options.ip_adapter_scale == "dynamic"
    ip_scale = attach_ip_adapter(unet, ip_adapter, None if dynamic_ip else options.ip_adapter_scale) if ip_adapter else None
    for network in networks.values():
        network.eval()

    # Tracing runs the network once. torch's fp16 convolutions on CPUs without fp16 units are ~235x slower than
    # fp32 (a 320-channel 3x3 conv at latent 64^2: 89 s vs 0.38 s), so a half-precision copy is traced at a
    # small latent size: H/W stay dynamic, upsample sizes come from the skips, and validation runs elsewhere.
    size = 8 if options.dtype == "fp16" else components.training_size // 8
    # The small components go first and the UNet last: each network's weights are freed once it is exported.
    jobs: list[tuple[nn.Module, ComponentSpec, dict, list[dict]]] = []
    for name in ("text_encoder", "text_encoder_2"):
        if name in networks:
            module = TextEncoderForExport(networks[name], all_hidden_states=sdxl, projected=(name == "text_encoder_2")).eval()
            spec = text_encoder_spec(name, networks[name], all_hidden_states=sdxl)
            jobs.append((module, spec, spec.example(1), [{"label": {"batch": 3}, "inputs": spec.example(3, seed=5)}]))
    if components.vae is not None:
        vae = VaeDecoderForExport(components.vae).eval()
        spec = vae_decoder_spec(components.vae)
        jobs.append((vae, spec, spec.example(1, size // 2, size // 2),
                     [{"label": {"width": w, "height": h, "batch": b}, "inputs": spec.example(b, h // 8, w // 8, seed=i)}
                      for i, (w, h, b) in enumerate(options.validation_sizes[:2])]))
        if options.vae_encoder:
            jobs.append(vae_encoder_job(components.vae, size, options.validation_sizes))
    if ip_adapter is not None:
        jobs.append(image_encoder_job(ip_adapter.encoder))
    ip_inputs = IPAdapterInputs(ip_adapter.embed_shape(), dynamic_ip) if ip_adapter else None
    unet_module, spec = unet_export_module(unet, sdxl, alpha_source, dynamic, [c.model for c in controlnets], ip_inputs, ip_scale)
    jobs.append((unet_module, spec, spec.example(2, size, size), _unet_cases(spec, options.validation_sizes, dynamic)))

    manifest = {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "resadapter_rt_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "family": components.family.name, "training_size": components.training_size,
        "pixel_range": list(components.pixel_range),
        "sources": merge_record(components, adapter, None if dynamic else options.alpha, loras),
        "alpha_mode": "dynamic" if dynamic else "baked", "alpha": None if dynamic else options.alpha,
        "opset": OPSET, "dtype": options.dtype, "target": options.target,
        "torch_version": torch.__version__, "onnx_version": onnx.__version__,
        "vae_scaling_factor": float(components.vae.config.scaling_factor) if components.vae else None,
        "vae_scale_factor": 2 ** (len(components.vae.config.block_out_channels) - 1) if components.vae else None,
        # Read from the model (SDXL pipelines default to zero embeddings for an absent negative prompt).
        "force_zeros_for_empty_prompt": bool(components.force_zeros_for_empty_prompt),
        "components": {},
    }
    if controlnets:
        manifest["controlnets"] = [c.record() for c in controlnets]
    if ip_adapter is not None:
        manifest["ip_adapter"] = {**ip_adapter.record(), "scale_mode": "dynamic" if dynamic_ip else "baked",
                                  "scale": None if dynamic_ip else options.ip_adapter_scale,
                                  "feature_extractor": "feature_extractor/preprocessor_config.json"}
        ip_adapter.feature_extractor.save_pretrained(tmp / "feature_extractor")
    while jobs:
        module, spec, example, cases = jobs.pop(0)
        path = tmp / spec.name / "model.onnx"
        progress(f"[export] {spec.name}: computing PyTorch reference outputs at {len(cases)} off-trace shapes ...")
        references = _reference_outputs(module, spec, cases)
        tick = time.perf_counter()
        progress(f"[export] {spec.name}: tracing and writing ONNX ...")
        # fp16 covers the UNet (where the time goes) and the SD1.5 VAE decoder. SDXL's VAE overflows in
        # fp16 (black/NaN images) and the text encoders run once per prompt: they stay fp32.
        half = spec.name == "unet" or (spec.name == "vae_decoder" and not sdxl)
        dtype = options.dtype if half else "fp32"
        owned = not _shares_weights(module, [job[0] for job in jobs])  # no later job needs these weights
        with upsample_sizes_from_skips(unet):
            if dtype == "fp16":
                module = half_precision(module, inplace=owned)
            before = _export_one(module, spec, example, path)
        if owned:
            _release_weights(module)
        del module
        exported = time.perf_counter() - tick
        progress(f"[export] {spec.name}: validating against PyTorch at {len(cases)} off-trace shapes ...")
        results = _validate(spec, path, cases, references, MAX_RELATIVE_ERROR[dtype])
        fused = options.target == "cuda" and fuse_for_cuda(path, spec.name)  # validated above, pre-fusion
        after = group_norm_counts(onnx.load(str(path), load_external_data=False))
        manifest["components"][spec.name] = {
            "path": f"{spec.name}/model.onnx",
            "dtype": dtype, "io_dtype": "fp32",
            "sha256": onnx_artifact_sha256(path),  # graph + external weights
            "external_data": (path.parent / "model.onnx.data").is_file(),
            **_io_description(path),
            "trace_shape": {k: list(v.shape) for k, v in example.items()},
            "group_norm": {"form": GROUP_NORM_FORM["cuda" if fused else "cpu"], "before": before, "after": after},
            "validated_graph": "pre-fusion (fused CUDA ops have no CPU kernels)" if fused else "as written",
            "export_seconds": round(exported, 2),
            "validation": results,
        }
        worst = max(r["relative_error"] for r in results)
        progress(f"[export] {spec.name}: ok ({exported:.1f} s, worst relative error {worst:.1e})")
    # Listed UNet first, as readers expect, although it was exported last.
    manifest["components"] = {name: manifest["components"][name]
                              for name in sorted(manifest["components"], key=lambda name: name != "unet")}
    for name in ("tokenizer", "tokenizer_2", "scheduler"):
        part = getattr(components, name)
        if part is not None:
            part.save_pretrained(tmp / name)
    if components.scheduler is not None:  # the runtime's default scheduler: the model's own
        manifest["scheduler"] = {"class": type(components.scheduler).__name__, "config": "scheduler/scheduler_config.json"}
    if "text_encoder" in networks and components.vae is not None:  # a whole pipeline: loadable by optimum/diffusers
        write_loader_files(tmp, components, networks, sdxl)
        manifest["interop"] = interop_record(dynamic)
        extra_inputs = (["controlnet_cond", "controlnet_scale"] if controlnets else []) + \
            (["image_embeds"] + (["ip_adapter_scale"] if dynamic_ip else []) if ip_adapter else [])
        if extra_inputs:  # optimum's and diffusers' SD pipelines feed no control or image-prompt inputs
            note = f"the UNet takes {' and '.join(extra_inputs)}, which optimum does not feed"
            manifest["interop"] |= {"optimum_onnxruntime_drop_in": False,
                                    "note": f"{note}; {manifest['interop']['note']}" if dynamic else note}
    manifest["export_seconds"] = round(time.perf_counter() - started, 2)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


REQUIRED_KEYS = ("family", "training_size", "sources", "alpha_mode", "alpha", "dtype", "target", "components")


def read_manifest(directory: Path) -> dict:
    """The manifest of an export directory, refusing other formats, versions and shapes with one line."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise ResAdapterRTError(f"{directory}: no manifest.json; not an export directory (create one with `resadapter-rt export`)")
    manifest = read_json_object(path, "re-run `resadapter-rt export`")
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("format_version") != MANIFEST_VERSION:
        raise ResAdapterRTError(
            f"{directory}: export format {manifest.get('format')!r} v{manifest.get('format_version')} is not "
            f"{MANIFEST_FORMAT} v{MANIFEST_VERSION}; re-export it with this version (`resadapter-rt export ... --force`)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing or not isinstance(manifest["components"], dict) or not manifest["components"]:
        raise ResAdapterRTError(f"{path}: incomplete manifest (missing {', '.join(missing) or 'components'}); "
                                "re-run `resadapter-rt export ... --force`")
    return manifest


def export_files_problem(directory: Path, manifest: dict) -> str | None:
    """What is wrong with an export's files (a component outside the directory or missing), or None."""
    root = Path(directory).resolve()
    for name, component in manifest["components"].items():
        relative = component.get("path", "") if isinstance(component, dict) else ""
        path = (root / relative).resolve()
        if not relative or root not in path.parents:
            return f"component {name} has path {relative!r}, which is not inside the export directory"
        if not path.is_file():
            return f"{relative} is missing"
        if component.get("external_data") and not path.with_name(path.name + EXTERNAL_DATA_SUFFIX).is_file():
            return f"{relative}{EXTERNAL_DATA_SUFFIX} (its weights) is missing"
    for part in ("tokenizer", "scheduler"):
        if "text_encoder" in manifest["components"] and not (root / part).is_dir():
            return f"{part}/ is missing"
    if manifest.get("ip_adapter") and not (root / "feature_extractor" / "preprocessor_config.json").is_file():
        return "feature_extractor/preprocessor_config.json (the IP-Adapter's image preprocessing) is missing"
    return None


def check_export_files(directory: Path, manifest: dict) -> None:
    """Refuse, in one line, an export whose files are incomplete or point outside it."""
    problem = export_files_problem(directory, manifest)
    if problem:
        raise ResAdapterRTError(f"{directory}: {problem}, so this export is incomplete; re-export it "
                                "(`resadapter-rt export ... --force`)")

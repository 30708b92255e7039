"""``resadapter-rt triton-repo``: a Triton Inference Server model repository from an export or engine directory.

One model per component (``onnxruntime_onnx`` with ``model.onnx``, or ``tensorrt_plan`` with
``model.plan`` and its optimization profiles for engines built with ``--runtime tensorrt``), names,
datatypes and dims (``-1`` where dynamic) from the manifest, ``max_batch_size: 0`` (the batch is a
dim of its own), and the python-backend model ``resadapter`` that runs the scheduler loop over them
through BLS (``triton_model.py``). TensorRT-RTX engines do not load in Triton's TensorRT backend, so
an engine directory built with tensorrt-rtx gets the ONNX models of its ``onnx/`` export.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ResAdapterRTError
from .protocol import INPUTS, MODEL_NAME

TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int32": "TYPE_INT32",
                "int64": "TYPE_INT64", "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8"}
PROTOCOL_TYPES = {"BYTES": "TYPE_STRING", "INT64": "TYPE_INT64", "FP32": "TYPE_FP32", "BOOL": "TYPE_BOOL"}


def _tensor(name: str, data_type: str, dims: list[int], optional: bool = False) -> str:
    """One ``input``/``output`` entry; a scalar travels as dims [1] reshaped to []."""
    shape = f'dims: [ 1 ] reshape: {{ shape: [ ] }}' if not dims else f'dims: [ {", ".join(map(str, dims))} ]'
    return f'  {{ name: "{name}" data_type: {data_type} {shape}{" optional: true" if optional else ""} }}'


def _dims(shape: list) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _types(spec: dict, component: str) -> tuple[list[str], list[str]]:
    def triton_type(tensor: dict) -> str:
        if tensor["dtype"] not in TRITON_TYPES:
            raise ResAdapterRTError(f"{component}: tensor {tensor['name']} has dtype {tensor['dtype']}, which this "
                                    f"repository writer does not map; known: {', '.join(TRITON_TYPES)}")
        return TRITON_TYPES[tensor["dtype"]]

    inputs = [_tensor(t["name"], triton_type(t), _dims(t["shape"])) for t in spec["inputs"]]
    outputs = [_tensor(t["name"], triton_type(t), _dims(t["shape"])) for t in spec["outputs"]]
    return inputs, outputs


def component_config(name: str, spec: dict, profiles: int | None) -> str:
    """``config.pbtxt`` of a component: ONNX Runtime, or TensorRT with ``profiles`` optimization profiles."""
    inputs, outputs = _types(spec, name)
    platform = "onnxruntime_onnx" if profiles is None else "tensorrt_plan"
    lines = [f'name: "{name}"', f'platform: "{platform}"', "max_batch_size: 0",
             "input [", ",\n".join(inputs), "]", "output [", ",\n".join(outputs), "]"]
    if profiles is not None:
        listed = ", ".join(f'"{i}"' for i in range(profiles))
        lines += ["instance_group [", f"  {{ kind: KIND_GPU count: 1 profile: [ {listed} ] }}", "]"]
    return "\n".join(lines) + "\n"


def pipeline_config() -> str:
    """``config.pbtxt`` of the BLS model: the Open Inference Protocol inputs of ``resadapter-rt serve``."""
    inputs = [_tensor(name, PROTOCOL_TYPES[datatype], [1], optional=name != "prompt") for name, (datatype, _) in INPUTS.items()]
    return "\n".join([f'name: "{MODEL_NAME}"', 'backend: "python"', "max_batch_size: 0", "input [", ",\n".join(inputs), "]",
                      "output [", _tensor("image", "TYPE_UINT8", [-1, -1, 3]), "]",
                      "instance_group [", "  { kind: KIND_CPU count: 1 }", "]"]) + "\n"


def _link_or_copy(source: str, destination: str) -> None:
    """Hard link (same file system: no copy of multi-GB weights), else copy."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def write_triton_repository(directory: str | Path, out: str | Path, force: bool = False) -> list[str]:
    """Write the repository for ``directory`` (export or engine directory) to ``out``; returns its model names."""
    from ..engines.manifest import read_engine_manifest
    from ..export.exporter import check_export_files, read_manifest
    from ..files import atomic_directory, check_output_dir

    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise ResAdapterRTError(f"{directory}: no such export or engine directory")
    engine_dir = (directory / "onnx").is_dir()
    export_dir = directory / "onnx" if engine_dir else directory
    manifest = read_manifest(export_dir)
    check_export_files(export_dir, manifest)
    engines = read_engine_manifest(directory) if engine_dir else None
    plans = engines is not None and engines["runtime"]["family"] == "tensorrt"
    check_output_dir(out, force)
    with atomic_directory(out, force=force) as tmp:
        for name, spec in manifest["components"].items():
            version = tmp / name / "1"
            if plans:
                version.mkdir(parents=True)
                _link_or_copy(str(directory / engines["components"][name]["engine"]), str(version / "model.plan"))
            else:
                shutil.copytree(export_dir / Path(spec["path"]).parent, version, copy_function=_link_or_copy)
            (tmp / name / "config.pbtxt").write_text(component_config(name, spec, len(engines["profiles"]) if plans else None))
        bls = tmp / MODEL_NAME / "1"
        (bls / "export").mkdir(parents=True)
        shutil.copy2(Path(__file__).with_name("triton_model.py"), bls / "model.py")
        for part in ("manifest.json", "scheduler", "tokenizer", "tokenizer_2", "feature_extractor"):
            source = export_dir / part
            if source.is_dir():
                shutil.copytree(source, bls / "export" / part)
            elif source.is_file():
                shutil.copy2(source, bls / "export" / part)
        (tmp / MODEL_NAME / "config.pbtxt").write_text(pipeline_config())
    return [*manifest["components"], MODEL_NAME]

"""ONNX graph housekeeping: cleanup (constant folding, shape inference), saving, op counts."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2 * 1024**3
EXTERNAL_DATA_SUFFIX = ".data"


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model.graph.node))


def group_norm_counts(model: onnx.ModelProto) -> dict[str, int]:
    """How GroupNorm appears: the InstanceNorm pattern, opset-21 GroupNormalization, or ORT's fused ops
    (``SkipGroupNorm`` is GroupNorm with the residual Add before it folded in)."""
    counts = op_counts(model)
    return {
        "InstanceNormalization": counts.get("InstanceNormalization", 0),
        "GroupNormalization": counts.get("GroupNormalization", 0),
        "com.microsoft.GroupNorm": sum(1 for n in model.graph.node if n.op_type == "GroupNorm" and n.domain == "com.microsoft"),
        "com.microsoft.SkipGroupNorm": sum(1 for n in model.graph.node if n.op_type == "SkipGroupNorm" and n.domain == "com.microsoft"),
    }


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constants and drop dead nodes (onnx-graphsurgeon), as TensorRT's demos do before parsing."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    return gs.export_onnx(graph)


def save(model: onnx.ModelProto, path: Path) -> None:
    """Save ``model``; past protobuf's 2 GB limit the weights go to one ``model.onnx.data`` beside it.

    Shapes are inferred on the saved file (the path-based API works past 2 GB).
    """
    path = Path(path)
    large = model.ByteSize() > PROTOBUF_LIMIT if _fits_bytesize(model) else True
    if large:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + EXTERNAL_DATA_SUFFIX, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))


def _fits_bytesize(model: onnx.ModelProto) -> bool:
    try:
        model.ByteSize()
        return True
    except Exception:  # protobuf refuses to size messages past 2 GB
        return False

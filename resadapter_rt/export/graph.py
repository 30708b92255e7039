"""ONNX graph housekeeping: cleanup (constant folding, shape inference), saving, op counts."""

from __future__ import annotations

import collections
from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2 * 1024**3
ALIGNMENT = 4096  # page-aligned weights can be memory-mapped by readers
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
    """Fold constants and drop dead nodes (onnx-graphsurgeon), as TensorRT's demos do before parsing.

    Initializers kept in external files (see ``detach_weights``) stand in as graph inputs while the graph
    is cleaned, so neither onnx-graphsurgeon nor ONNX Runtime ever loads them: torch's exporter has
    already folded every weight-only subgraph, and what is left to fold is shape arithmetic.
    """
    import onnx_graphsurgeon as gs

    external = {t.name: t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    inputs = [value.name for value in model.graph.input]
    if external:
        kept = [t for t in model.graph.initializer if t.name not in external]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        model.graph.input.extend(onnx.helper.make_tensor_value_info(name, t.data_type, t.dims) for name, t in external.items())
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup().toposort()
    cleaned = gs.export_onnx(graph)
    if external:
        used = {name for node in cleaned.graph.node for name in node.input}
        graph_inputs = [value for value in cleaned.graph.input if value.name in inputs]
        del cleaned.graph.input[:]
        cleaned.graph.input.extend(graph_inputs)
        cleaned.graph.initializer.extend(t for name, t in external.items() if name in used)
    return cleaned


def detach_weights(model: onnx.ModelProto, directory: Path, threshold: int = 1024) -> int:
    """Move every initializer over ``threshold`` bytes still held in ``model`` into a file under ``directory``.

    One tensor at a time, each cleared from memory as it is written. Returns the bytes of all external
    weights (moved here or already external, as torch writes them past 2 GB).
    """
    from onnx.external_data_helper import ExternalDataInfo

    total = 0
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = ExternalDataInfo(tensor)
            total += info.length if info.length is not None else (Path(directory) / info.location).stat().st_size
        elif tensor.HasField("raw_data") and len(tensor.raw_data) > threshold:
            location = f"detached-{index}"
            (Path(directory) / location).write_bytes(tensor.raw_data)
            total += len(tensor.raw_data)
            _point_to(tensor, location, 0, len(tensor.raw_data))
            tensor.ClearField("raw_data")
    return total


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    """Make ``tensor`` read its data from ``location`` (relative to the model file) at ``offset``."""
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def save(model: onnx.ModelProto, path: Path, weights_dir: Path, weight_bytes: int) -> None:
    """Save ``model``, whose large weights lie in files under ``weights_dir`` (``detach_weights``).

    Up to protobuf's 2 GB limit the weights are embedded again; past it they are copied, one tensor at
    a time and page-aligned, into one ``model.onnx.data`` beside ``path``. Shapes are inferred on the
    saved file (the path-based API works past 2 GB).
    """
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model

    path = Path(path)
    if weight_bytes + model.ByteSize() <= PROTOBUF_LIMIT:
        load_external_data_for_model(model, str(weights_dir))
        onnx.save_model(model, str(path))
    else:
        location = path.name + EXTERNAL_DATA_SUFFIX
        with open(path.with_name(location), "wb") as data:
            for tensor in model.graph.initializer:
                if tensor.data_location != onnx.TensorProto.EXTERNAL:
                    continue
                info = ExternalDataInfo(tensor)
                with open(Path(weights_dir) / info.location, "rb") as source:
                    source.seek(info.offset or 0)
                    payload = source.read() if info.length is None else source.read(info.length)
                offset = -(-data.tell() // ALIGNMENT) * ALIGNMENT
                data.seek(offset)
                data.write(payload)
                _point_to(tensor, location, offset, len(payload))
        onnx.save_model(model, str(path))
    onnx.shape_inference.infer_shapes_path(str(path), str(path))

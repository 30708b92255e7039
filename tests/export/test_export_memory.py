"""Exports keep weights out of memory: the graph is cleaned without them and written by streaming them."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.external_data_helper import ExternalDataInfo

from conftest import quiet
from resadapter_rt.export import graph
from resadapter_rt.export.dynamic_alpha import attach_lora_branches
from resadapter_rt.export.exporter import ExportOptions, export_pipeline
from resadapter_rt.export.precision import half_precision
from resadapter_rt.export.specs import upsample_sizes_from_skips
from resadapter_rt.export.unet import UNetForExport, unet_spec
from resadapter_rt.models import load_adapter, load_components
from resadapter_rt.models.merge import merge_adapter


@pytest.fixture(scope="module")
def raw_unet(tmp_path_factory):
    """The tiny SD1.5 dynamic-alpha UNet as torch's exporter writes it, and an example input."""
    directory = tmp_path_factory.mktemp("raw")
    parts, adapter = load_components("tiny-sd15"), load_adapter("tiny-sd15")
    unet = merge_adapter(parts.unet, adapter, 0.0, inplace=True)
    module = UNetForExport(unet, False, attach_lora_branches(unet, adapter)).eval()
    spec = unet_spec(unet, False, True)
    example = spec.example(2, 8, 8)
    with upsample_sizes_from_skips(unet), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(example[n] for n in spec.inputs), str(directory / "model.onnx"), dynamo=False,
                          opset_version=17, input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes=spec.dynamic_axes, do_constant_folding=True)
    return directory / "model.onnx", {k: v.numpy() for k, v in spec.example(1, 7, 5, seed=3, alpha=0.6).items()}


def run(path, inputs):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def test_cleanup_without_weights_in_memory_gives_the_same_graph(raw_unet, tmp_path):
    raw, inputs = raw_unet
    in_memory = graph.cleanup(onnx.load(str(raw)))
    graph.save(in_memory, tmp_path / "a.onnx", tmp_path, 0)
    detached = onnx.load(str(raw))
    weight_bytes = graph.detach_weights(detached, tmp_path)
    assert weight_bytes > 1_000_000 and not any(t.HasField("raw_data") and len(t.raw_data) > 1024 for t in detached.graph.initializer)
    cleaned = graph.cleanup(detached)
    assert graph.op_counts(cleaned) == graph.op_counts(in_memory) and len(cleaned.graph.node) == len(in_memory.graph.node)
    assert [v.name for v in cleaned.graph.input] == [v.name for v in in_memory.graph.input]
    graph.save(cleaned, tmp_path / "b.onnx", tmp_path, weight_bytes)
    assert not (tmp_path / "b.onnx.data").exists()  # under 2 GB the weights are embedded again
    np.testing.assert_array_equal(run(tmp_path / "b.onnx", inputs), run(tmp_path / "a.onnx", inputs))


def test_weights_past_the_protobuf_limit_stream_into_one_page_aligned_file(raw_unet, tmp_path, monkeypatch):
    raw, inputs = raw_unet
    reference = graph.cleanup(onnx.load(str(raw)))
    graph.save(reference, tmp_path / "reference.onnx", tmp_path, 0)
    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", 0)
    model = onnx.load(str(raw))
    weight_bytes = graph.detach_weights(model, tmp_path)
    graph.save(graph.cleanup(model), tmp_path / "model.onnx", tmp_path, weight_bytes)
    written = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    external = [ExternalDataInfo(t) for t in written.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert {info.location for info in external} == {"model.onnx.data"}
    assert all(info.offset % graph.ALIGNMENT == 0 for info in external)
    assert sum(info.length for info in external) == weight_bytes
    np.testing.assert_array_equal(run(tmp_path / "model.onnx", inputs), run(tmp_path / "reference.onnx", inputs))


def test_a_whole_export_past_the_limit_is_validated_and_loadable(tmp_path, monkeypatch):
    monkeypatch.setattr(graph, "PROTOBUF_LIMIT", 0)
    manifest = export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", dtype="fp16",
                                             validation_sizes=((328, 200, 1),)), tmp_path / "out", progress=quiet)
    for name, component in manifest["components"].items():
        assert component["external_data"] and (tmp_path / "out" / name / "model.onnx.data").is_file()
        assert max(r["relative_error"] for r in component["validation"]) <= 2e-2
    assert json.loads((tmp_path / "out/manifest.json").read_text())["components"]["unet"]["dtype"] == "fp16"


def test_in_place_half_precision_converts_the_module_itself():
    from resadapter_rt.export.precision import Fp32GroupNorm

    unet = load_components("tiny-sd15").unet
    converted = half_precision(unet, inplace=True)
    assert converted.module is unet
    norms = {id(p) for m in unet.modules() if isinstance(m, Fp32GroupNorm) for p in m.parameters()}
    assert norms and all((p.dtype == torch.float32) == (id(p) in norms) for p in unet.parameters())


def test_weights_shared_with_a_later_component_are_kept():
    from resadapter_rt.export.exporter import _shares_weights

    shared, other = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert _shares_weights(torch.nn.Sequential(shared), [torch.nn.Sequential(other), torch.nn.Sequential(shared)])
    assert not _shares_weights(torch.nn.Sequential(shared), [torch.nn.Sequential(other)])

"""`resadapter-rt triton-repo`: configs parse with Triton's protobuf definitions and match the manifest; the
BLS pipeline model, run against the repository's ONNX models, gives the image `generate` writes."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from cli_harness import assert_bad_input_touches_nothing, run_main
from serve_fixtures import cli_image, tiny_export  # noqa: F401 (fixture)

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (the test extra)")


@pytest.fixture(scope="module")
def repository(tiny_export, tmp_path_factory):
    from resadapter_rt.serve.triton_repo import write_triton_repository

    out = tmp_path_factory.mktemp("triton") / "repo"
    assert write_triton_repository(tiny_export, out) == ["unet", "text_encoder", "vae_decoder", "resadapter"]
    return out


def parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_component_configs_parse_and_match_the_manifest(repository, tiny_export):
    from tritonclient.grpc import model_config_pb2

    manifest = json.loads((tiny_export / "manifest.json").read_text())
    types_ = {"float32": model_config_pb2.TYPE_FP32, "int32": model_config_pb2.TYPE_INT32}
    for name, spec in manifest["components"].items():
        config = parse_config(repository / name / "config.pbtxt")
        assert (config.name, config.platform, config.max_batch_size) == (name, "onnxruntime_onnx", 0)
        for declared, tensors in ((config.input, spec["inputs"]), (config.output, spec["outputs"])):
            assert [t.name for t in declared] == [t["name"] for t in tensors]
            for entry, tensor in zip(declared, tensors):
                assert entry.data_type == types_[tensor["dtype"]]
                expected = [d if isinstance(d, int) else -1 for d in tensor["shape"]]
                assert (list(entry.dims), list(entry.reshape.shape)) == ((expected, []) if expected else ([1], []))
        model = repository / name / "1" / "model.onnx"
        assert model.read_bytes() == (tiny_export / spec["path"]).read_bytes()
    unet = parse_config(repository / "unet" / "config.pbtxt")
    assert [list(i.dims) for i in unet.input][0] == [-1, 4, -1, -1]  # batch, channels, latent height, width


def test_pipeline_model_config_is_the_serving_protocol(repository):
    from tritonclient.grpc import model_config_pb2

    from resadapter_rt.serve.protocol import INPUTS

    config = parse_config(repository / "resadapter" / "config.pbtxt")
    assert (config.name, config.backend) == ("resadapter", "python")
    assert [i.name for i in config.input] == list(INPUTS)
    assert [i.name for i in config.input if not i.optional] == ["prompt"]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("image", model_config_pb2.TYPE_UINT8, [-1, -1, 3])]
    assert (repository / "resadapter" / "1" / "model.py").is_file()
    assert (repository / "resadapter" / "1" / "export" / "scheduler" / "scheduler_config.json").is_file()


def fake_python_backend(repository: Path) -> types.ModuleType:
    """``triton_python_backend_utils`` whose BLS requests run the repository's ONNX models with ONNX Runtime."""
    import onnxruntime as ort

    utils = types.ModuleType("triton_python_backend_utils")
    sessions = {}

    class Tensor:
        def __init__(self, name, array):
            self._name, self._array = name, np.asarray(array)

        def name(self):
            return self._name

        def as_numpy(self):
            return self._array

    class Response:
        def __init__(self, output_tensors, error=None):
            self.output_tensors, self._error = output_tensors, error

        def has_error(self):
            return self._error is not None

        def error(self):
            return self._error

    class Request:
        def __init__(self, model_name, requested_output_names, inputs):
            self.model_name, self.outputs, self.inputs = model_name, requested_output_names, inputs

        def exec(self):
            if self.model_name not in sessions:
                sessions[self.model_name] = ort.InferenceSession(str(repository / self.model_name / "1" / "model.onnx"))
            session = sessions[self.model_name]
            values = session.run(self.outputs, {t.name(): t.as_numpy() for t in self.inputs})
            return Response([Tensor(n, v) for n, v in zip(self.outputs, values)])

    class TritonError:
        def __init__(self, message):
            self._message = message

        def message(self):
            return self._message

    utils.Tensor, utils.InferenceRequest, utils.InferenceResponse, utils.TritonError = Tensor, Request, Response, TritonError
    utils.TritonModelException = RuntimeError
    utils.get_output_tensor_by_name = lambda response, name: next(t for t in response.output_tensors if t.name() == name)
    utils.get_input_tensor_by_name = lambda request, name: next((t for t in request.inputs if t.name() == name), None)
    return utils


def test_bls_pipeline_model_gives_the_image_generate_writes(repository, tiny_export, tmp_path, capsys, monkeypatch):
    utils = fake_python_backend(repository)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("resadapter_triton_model", repository / "resadapter" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(repository / "resadapter"), "model_version": "1"})

    parameters = dict(prompt="a red fox", width=192, height=128, steps=3, seed=4, guidance=6.5, alpha=0.7, scheduler="euler-a")
    tensors = [utils.Tensor("prompt", np.array([b"a red fox"], dtype=object)), utils.Tensor("width", np.array([192])),
               utils.Tensor("height", np.array([128])), utils.Tensor("steps", np.array([3])), utils.Tensor("seed", np.array([4])),
               utils.Tensor("guidance_scale", np.array([6.5], dtype=np.float32)),
               utils.Tensor("resadapter_alpha", np.array([0.7], dtype=np.float32)),
               utils.Tensor("scheduler", np.array([b"euler-a"], dtype=object))]
    bad = [utils.Tensor("prompt", np.array([b"a red fox"], dtype=object)), utils.Tensor("width", np.array([100]))]
    good, refused = model.execute([utils.InferenceRequest("resadapter", ["image"], tensors),
                                   utils.InferenceRequest("resadapter", ["image"], bad)])
    assert np.array_equal(good.output_tensors[0].as_numpy(), cli_image(tiny_export, tmp_path, capsys, **parameters))
    assert refused.error().message() == "width 100 is not a multiple of 8 px; use e.g. 128"


def test_tensorrt_engines_become_plan_models_with_their_profiles(tiny_export, tmp_path):
    from resadapter_rt.engines.manifest import ENGINE_FORMAT, ENGINE_FORMAT_VERSION
    from resadapter_rt.serve.triton_repo import write_triton_repository

    engines = tmp_path / "engines"
    shutil.copytree(tiny_export, engines / "onnx")
    export = json.loads((tiny_export / "manifest.json").read_text())
    (engines / "engines").mkdir()
    components = {}
    for name, spec in export["components"].items():
        (engines / "engines" / f"{name}.plan").write_bytes(name.encode())  # stands in for a serialized engine
        components[name] = {"engine": f"engines/{name}.plan", "sha256": "-", "size_bytes": len(name), "onnx": spec["path"],
                            "onnx_sha256": "-", "precision": "fp16", "inputs": spec["inputs"], "outputs": spec["outputs"]}
    (engines / "manifest.json").write_text(json.dumps({
        "format": ENGINE_FORMAT, "format_version": ENGINE_FORMAT_VERSION, "family": "sd15", "alpha_mode": "dynamic",
        "sources": {}, "runtime": {"family": "tensorrt", "version": "10.13"}, "compute_capabilities": [],
        "profiles": [{"spec": "128-512"}, {"spec": "512-1024"}], "components": components, "built_at": "now"}))
    write_triton_repository(engines, tmp_path / "repo")
    for name in export["components"]:
        config = parse_config(tmp_path / "repo" / name / "config.pbtxt")
        assert config.platform == "tensorrt_plan"
        assert [list(g.profile) for g in config.instance_group] == [["0", "1"]]
        assert (tmp_path / "repo" / name / "1" / "model.plan").read_bytes() == name.encode()


def test_bad_input_touches_nothing(tmp_path, monkeypatch, capsys, tiny_export):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert_bad_input_touches_nothing(tmp_path, ["triton-repo", str(tiny_export), "--out", "mine"],
                                     "mine: directory is not empty and was not created by resadapter-rt", monkeypatch, capsys)
    assert_bad_input_touches_nothing(tmp_path, ["triton-repo", "missing", "--out", "repo"],
                                     "missing: no such export or engine directory", monkeypatch, capsys)
    result = run_main(["triton-repo", str(tiny_export), "--out", str(tmp_path / "repo")], capsys)
    assert result.returncode == 0 and "resadapter" in result.stdout

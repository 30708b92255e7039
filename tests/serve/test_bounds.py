"""Request bounds, and gRPC request parsing against the HTTP path's (no Ray, no export; the defaults drawn from
an export are checked in test_serve_cli.py, beside its other uses of the tiny export)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from resadapter_rt.errors import ResAdapterRTError


@pytest.mark.parametrize("parameters,message", [
    ({"width": 520, "height": 512}, "520x512 is 266240 pixels, above this server's --max-pixels 262144"),
    ({"width": 1024}, None),  # the height left out is the training size: 1024x256 is exactly at the bound, accepted
    ({"width": 1032}, "1032x256 is 264192 pixels, above this server's --max-pixels 262144; ask for a smaller width x height"),
    ({"steps": 151}, "steps 151 is above this server's --max-steps 150; ask for 150 or fewer"),
    ({}, None),
])
def test_bounds_check_what_a_request_asks_for_with_its_defaults(parameters, message):
    from resadapter_rt.serve.bounds import RequestBounds

    bounds = RequestBounds(max_pixels=512 * 512)
    if message is None:
        bounds.check(parameters, training_size=256, default_steps=25)
        return
    with pytest.raises(ResAdapterRTError, match="^" + message.replace("+", r"\+")):
        bounds.check(parameters, training_size=256, default_steps=25)


def test_default_steps_beyond_a_lower_bound_are_refused():
    from resadapter_rt.serve.bounds import RequestBounds

    with pytest.raises(ResAdapterRTError, match="^steps 25 is above this server's --max-steps 20"):
        RequestBounds(max_pixels=512 * 512, max_steps=20).check({}, training_size=256, default_steps=25)


def grpc_request(**fields):
    """A ModelInferRequest as tritonclient.grpc builds it (raw contents) from (datatype, value) inputs."""
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name="resadapter", id="r1")
    for name, (dtype, value) in fields.items():
        tensor = grpcclient.InferInput(name, [1], dtype)
        tensor.set_data_from_numpy(np.array([value], dtype={"BYTES": np.object_, "INT64": np.int64, "FP32": np.float32}[dtype]))
        request.inputs.extend([tensor._get_tensor()])
        request.raw_input_contents.extend([tensor._get_content()])
    return request


def test_grpc_raw_and_typed_contents_parse_as_the_http_json_does():
    from resadapter_rt.serve.grpc_protocol import parse_grpc_request
    from resadapter_rt.serve.protocol import parse_infer_request

    raw = parse_grpc_request(grpc_request(prompt=("BYTES", b"a fox"), width=("INT64", 192), resadapter_alpha=("FP32", 0.7)))
    body = {"id": "r1", "inputs": [{"name": "prompt", "shape": [1], "datatype": "BYTES", "data": ["a fox"]},
                                   {"name": "width", "shape": [1], "datatype": "INT64", "data": [192]},
                                   {"name": "resadapter_alpha", "shape": [1], "datatype": "FP32", "data": [0.7]}]}
    assert raw == parse_infer_request(json.dumps(body).encode(), None).__class__(**{
        **parse_infer_request(json.dumps(body).encode(), None).__dict__, "binary_output": True})
    typed = grpc_request(prompt=("BYTES", b"a fox"))
    typed.raw_input_contents.pop()
    typed.inputs[0].contents.bytes_contents.append(b"a fox")
    assert parse_grpc_request(typed).parameters == {"prompt": "a fox"}


@pytest.mark.parametrize("fields,message", [
    ({"size": ("INT64", 1)}, "unknown input 'size'; the inputs are prompt, "),
    ({"prompt": ("INT64", 1)}, "input prompt has datatype INT64; send BYTES"),
    ({"width": ("INT64", 128)}, "input prompt is missing; send the text to generate from"),
    ({"prompt": ("BYTES", b"\xff")}, "input prompt is not UTF-8 text"),
])
def test_grpc_bad_inputs_are_the_http_messages(fields, message):
    from resadapter_rt.serve.grpc_protocol import parse_grpc_request

    with pytest.raises(ResAdapterRTError, match="^" + message):
        parse_grpc_request(grpc_request(**fields))


def test_grpc_timeout_parameter_and_model_name():
    from resadapter_rt.serve.grpc_protocol import parse_grpc_request

    request = grpc_request(prompt=("BYTES", b"a fox"))
    request.parameters["timeout"].int64_param = 2_500_000
    assert parse_grpc_request(request).timeout_s == 2.5
    request.parameters["timeout"].string_param = "soon"
    with pytest.raises(ResAdapterRTError, match="^parameter timeout 'soon' must be a positive integer of microseconds$"):
        parse_grpc_request(request)
    request.model_name = "other"
    with pytest.raises(ResAdapterRTError, match="^unknown model 'other'; this server serves 'resadapter'$"):
        parse_grpc_request(request)

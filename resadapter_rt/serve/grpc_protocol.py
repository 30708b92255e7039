"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``) for the ``resadapter`` model.

Messages are ``tritonclient.grpc.service_pb2``'s (the servicer registration that ships in
``tritonclient``, no proto of our own); the inputs go through the HTTP path's checks
(``protocol.check_input``, ``decode_tensor``), so both faces accept and refuse the same requests.
The ingress answers the service's methods; Ray Serve's gRPC proxy routes them there.

tritonclient's generated classes name their module ``grpc_service_pb2`` (the proto's file name), which
does not import, so Ray could not pickle a request from the proxy to the ingress; ``add_servicer_to_server``
(the proxy's servicer function) and this module's import make that name an alias of ``service_pb2``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from ..errors import ResAdapterRTError
from .protocol import MODEL_NAME, MODEL_VERSION, OUTPUT, InferRequest, check_input, check_prompt_given, decode_tensor, \
    timeout_seconds

SERVICER_FUNCTION = "resadapter_rt.serve.grpc_protocol.add_servicer_to_server"
sys.modules.setdefault(service_pb2.ModelInferRequest.__module__, service_pb2)  # see the module docstring

# the protocol's InferTensorContents field for each datatype
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
             "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def add_servicer_to_server(servicer: Any, server: Any) -> None:
    """tritonclient's registration of ``inference.GRPCInferenceService`` (run in Serve's gRPC proxy)."""
    from tritonclient.grpc.service_pb2_grpc import add_GRPCInferenceServiceServicer_to_server

    add_GRPCInferenceServiceServicer_to_server(servicer, server)


def _parameter(value: Any) -> Any:
    """The value of an ``InferParameter`` (whichever field is set)."""
    field = value.WhichOneof("parameter_choice")
    return None if field is None else getattr(value, field)


def parse_grpc_request(request: Any) -> InferRequest:
    """A ``ModelInferRequest``: its inputs as raw contents (tritonclient) or typed contents."""
    if request.model_name != MODEL_NAME:
        raise ResAdapterRTError(f"unknown model {request.model_name!r}; this server serves {MODEL_NAME!r}")
    if request.model_version not in ("", MODEL_VERSION):
        raise ResAdapterRTError(f"unknown version {request.model_version!r} of {MODEL_NAME}; use {MODEL_VERSION!r} or none")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise ResAdapterRTError(f"{len(raw)} raw input contents for {len(request.inputs)} inputs; send one per input")
    parameters: dict[str, Any] = {}
    for index, tensor in enumerate(request.inputs):
        check_input(parameters, tensor.name, tensor.datatype)
        data = None if raw else list(getattr(tensor.contents, _CONTENTS[tensor.datatype]))
        parameters[tensor.name] = decode_tensor(tensor.name, tensor.datatype, data, raw[index] if raw else None)
    check_prompt_given(parameters)
    for output in request.outputs:
        if output.name != OUTPUT:
            raise ResAdapterRTError(f"unknown output {output.name!r}; the output is {OUTPUT}")
    timeout = _parameter(request.parameters["timeout"]) if "timeout" in request.parameters else None
    return InferRequest(parameters=parameters, request_id=request.id or None, binary_output=True,
                        timeout_s=timeout_seconds(timeout))


def infer_response(image: np.ndarray, request_id: str | None) -> Any:
    """A ``ModelInferResponse`` with ``image`` (UINT8 [H, W, 3]) as raw output contents."""
    response = service_pb2.ModelInferResponse(model_name=MODEL_NAME, model_version=MODEL_VERSION, id=request_id or "")
    response.outputs.add(name=OUTPUT, datatype="UINT8", shape=list(image.shape))
    response.raw_output_contents.append(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
    return response


def model_metadata_response(metadata: dict) -> Any:
    """``protocol.model_metadata``'s dictionary as a ``ModelMetadataResponse``."""
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    return service_pb2.ModelMetadataResponse(
        name=metadata["name"], versions=metadata["versions"], platform=metadata["platform"],
        inputs=[tensor(name=i["name"], datatype=i["datatype"], shape=i["shape"]) for i in metadata["inputs"]],
        outputs=[tensor(name=o["name"], datatype=o["datatype"], shape=o["shape"]) for o in metadata["outputs"]])


def check_model(name: str, version: str) -> None:
    """``ModelReady`` and ``ModelMetadata`` name this model (and its version, or none)."""
    if name != MODEL_NAME or version not in ("", MODEL_VERSION):
        raise ResAdapterRTError(f"unknown model {name!r} version {version!r}; this server serves {MODEL_NAME!r} "
                                f"version {MODEL_VERSION!r}")

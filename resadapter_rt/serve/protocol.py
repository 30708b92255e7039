"""The Open Inference Protocol (KServe v2) for the ``resadapter`` model: request parsing and response
encoding, JSON and the binary-data extension.

Tensor (de)serialization uses ``tritonclient.utils`` (NVIDIA's own helpers for the protocol's BYTES
layout and datatype names), so the server and ``tritonclient`` agree by construction; the request
and response envelopes are the protocol's JSON objects.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ResAdapterRTError

MODEL_NAME = "resadapter"
MODEL_VERSION = "1"
HEADER_LENGTH = "Inference-Header-Content-Length"

# input name -> (datatype, python type); every input has shape [1]
INPUTS: dict[str, tuple[str, type]] = {
    "prompt": ("BYTES", str), "negative_prompt": ("BYTES", str), "width": ("INT64", int), "height": ("INT64", int),
    "steps": ("INT64", int), "seed": ("INT64", int), "guidance_scale": ("FP32", float), "resadapter_alpha": ("FP32", float),
    "scheduler": ("BYTES", str), "prompt_weighting": ("BYTES", str),
    # MultiDiffusion tiling beyond the engine's sizes (``runtime/tiling.py``): pixels, and whether the width wraps
    "tile_size": ("INT64", int), "tile_stride": ("INT64", int), "circular": ("BOOL", bool),
}
OUTPUT = "image"


def model_metadata(platform: str) -> dict:
    """``GET /v2/models/resadapter``: names, datatypes and shapes of the inputs and the output."""
    return {"name": MODEL_NAME, "versions": [MODEL_VERSION], "platform": platform,
            "inputs": [{"name": name, "datatype": dtype, "shape": [1]} for name, (dtype, _) in INPUTS.items()],
            "outputs": [{"name": OUTPUT, "datatype": "UINT8", "shape": [-1, -1, 3]}]}


@dataclass
class InferRequest:
    """A parsed infer request: the generation parameters given, and how to answer."""

    parameters: dict[str, Any]
    request_id: str | None = None
    binary_output: bool = False
    timeout_s: float | None = None  # Triton's per-request ``timeout`` parameter (microseconds on the wire)


def decode_tensor(name: str, dtype: str, data: Any, raw: bytes | None) -> Any:
    """The single element of a [1] tensor given as JSON ``data`` or as binary bytes."""
    from tritonclient.utils import deserialize_bytes_tensor, triton_to_np_dtype

    if raw is not None:
        values = deserialize_bytes_tensor(raw) if dtype == "BYTES" else np.frombuffer(raw, dtype=triton_to_np_dtype(dtype))
        values = list(values)
    else:
        values = list(np.asarray(data, dtype=object).reshape(-1)) if data is not None else []
    if len(values) != 1:
        raise ResAdapterRTError(f"input {name} has {len(values)} elements; send exactly one (shape [1])")
    value = values[0]
    if dtype == "BYTES":
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError:
                raise ResAdapterRTError(f"input {name} is not UTF-8 text") from None
        if not isinstance(value, str):
            raise ResAdapterRTError(f"input {name} must be a string, got {value!r}")
        return value
    if dtype == "BOOL":
        if not isinstance(value, (bool, np.bool_)):
            raise ResAdapterRTError(f"input {name} must be true or false, got {value!r}")
        return bool(value)
    if dtype == "INT64":
        if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
            raise ResAdapterRTError(f"input {name} must be an integer, got {value!r}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ResAdapterRTError(f"input {name} must be a number, got {value!r}")
    # an FP32 on the wire means the shortest decimal that round-trips it (0.7, not 0.699999988)
    return float(str(np.float32(value))) if raw is not None else float(value)


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """``POST /v2/models/resadapter/infer``: JSON, or the binary-data extension when ``header_length`` is set."""
    try:
        split = int(header_length) if header_length is not None else len(body)
    except ValueError:
        raise ResAdapterRTError(f"{HEADER_LENGTH} {header_length!r} is not a byte count") from None
    if not 0 <= split <= len(body):
        raise ResAdapterRTError(f"{HEADER_LENGTH} {split} is outside the body ({len(body)} bytes)")
    try:
        envelope = json.loads(body[:split] or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResAdapterRTError(f"request body is not JSON ({exc}); send an Open Inference Protocol infer request") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("inputs"), list):
        raise ResAdapterRTError('request has no "inputs" list; send {"inputs": [{"name", "shape", "datatype", "data"}]}')
    binary, offset, parameters = body[split:], 0, {}
    for tensor in envelope["inputs"]:
        name, dtype = tensor.get("name"), tensor.get("datatype")
        check_input(parameters, name, dtype)
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ResAdapterRTError(f"input {name}: binary_data_size {size!r} runs past the request body")
            raw, offset = binary[offset:offset + size], offset + size
        elif "data" not in tensor:
            raise ResAdapterRTError(f"input {name} has neither data nor binary_data_size")
        parameters[name] = decode_tensor(name, dtype, tensor.get("data"), raw)
    check_prompt_given(parameters)
    binary_output = bool((envelope.get("parameters") or {}).get("binary_data_output", False))
    for output in envelope.get("outputs") or []:
        if output.get("name") != OUTPUT:
            raise ResAdapterRTError(f"unknown output {output.get('name')!r}; the output is {OUTPUT}")
        binary_output = bool((output.get("parameters") or {}).get("binary_data", binary_output))
    return InferRequest(parameters=parameters, request_id=envelope.get("id"), binary_output=binary_output,
                        timeout_s=timeout_seconds((envelope.get("parameters") or {}).get("timeout")))


def check_input(parameters: dict[str, Any], name: Any, dtype: Any) -> None:
    """An input tensor's name and datatype (HTTP and gRPC): known, given once, of the input's datatype."""
    if name not in INPUTS:
        raise ResAdapterRTError(f"unknown input {name!r}; the inputs are {', '.join(INPUTS)}")
    if name in parameters:
        raise ResAdapterRTError(f"input {name} is given twice")
    if dtype != INPUTS[name][0]:
        raise ResAdapterRTError(f"input {name} has datatype {dtype}; send {INPUTS[name][0]}")


def check_prompt_given(parameters: dict[str, Any]) -> None:
    if "prompt" not in parameters:
        raise ResAdapterRTError("input prompt is missing; send the text to generate from (BYTES, shape [1])")


def timeout_seconds(timeout: Any) -> float | None:
    """Triton's ``timeout`` request parameter (microseconds) in seconds."""
    if timeout is not None and (not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0):
        raise ResAdapterRTError(f"parameter timeout {timeout!r} must be a positive integer of microseconds")
    return None if timeout is None else timeout / 1e6


def encode_infer_response(image: np.ndarray, request_id: str | None, binary: bool) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for an ``image`` (UINT8 [H, W, 3])."""
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "UINT8", "shape": list(image.shape)}
    payload = b""
    if binary:
        payload = np.ascontiguousarray(image, dtype=np.uint8).tobytes()
        output["parameters"] = {"binary_data_size": len(payload)}
    else:
        output["data"] = image.reshape(-1).tolist()
    envelope = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "outputs": [output]}
    if request_id is not None:
        envelope["id"] = request_id
    header = json.dumps(envelope, separators=(",", ":")).encode()
    if not binary:
        return header, {"Content-Type": "application/json"}
    return header + payload, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def error_body(message: str) -> bytes:
    """The protocol's error object."""
    return json.dumps({"error": message}).encode()

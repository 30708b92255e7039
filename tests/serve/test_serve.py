"""`resadapter-rt serve`: the Open Inference Protocol with tritonclient against the tiny export."""

from __future__ import annotations

import numpy as np
import pytest

from serve_fixtures import cli_image, running_server, tiny_export  # noqa: F401 (fixture)

PARITY = dict(prompt="a red fox in the snow", width=192, height=128, steps=3, seed=7, guidance=6.5, alpha=0.7,
              scheduler="euler-a", negative_prompt="blurry")


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server(artifacts=str(tiny_export), replicas=2, max_batch_size=2, max_queue=2, timeout=120) as url:
        yield url


@pytest.fixture
def client(server):
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.removeprefix("http://"), network_timeout=120) as c:
        yield c


def infer_inputs(binary: bool = True, **parameters):
    """tritonclient inputs for generation ``parameters`` (the CLI's flag names)."""
    import tritonclient.http as httpclient

    names = {"guidance": ("guidance_scale", np.float32), "alpha": ("resadapter_alpha", np.float32)}
    inputs = []
    for flag, value in parameters.items():
        name, dtype = names.get(flag, (flag, np.int64 if isinstance(value, int) else np.object_))
        data = np.array([value.encode() if dtype is np.object_ else value], dtype=dtype)
        tensor = httpclient.InferInput(name, [1], {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}[dtype])
        tensor.set_data_from_numpy(data, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_image_equals_cli_generate(client, tiny_export, tmp_path, capsys, binary):
    import tritonclient.http as httpclient

    result = client.infer("resadapter", infer_inputs(binary, **PARITY),
                          outputs=[httpclient.InferRequestedOutput("image", binary_data=binary)])
    image = result.as_numpy("image")
    expected = cli_image(tiny_export, tmp_path, capsys, **PARITY)
    assert image.dtype == np.uint8 and image.shape == (128, 192, 3)
    assert np.array_equal(image, expected)


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("resadapter")
    metadata = client.get_model_metadata("resadapter")
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]} == {
        "prompt": "BYTES", "negative_prompt": "BYTES", "width": "INT64", "height": "INT64", "steps": "INT64",
        "seed": "INT64", "guidance_scale": "FP32", "resadapter_alpha": "FP32", "scheduler": "BYTES"}
    assert metadata["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, 3]}]

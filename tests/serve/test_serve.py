"""`resadapter-rt serve`: the Open Inference Protocol over HTTP and gRPC with tritonclient against the tiny export."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from serve_fixtures import cli_image, free_port, infer_json, metric, replica_stats, running_server, tiny_export, wait_for  # noqa: F401

PARITY = dict(prompt="a red fox in the snow", width=192, height=128, steps=3, seed=7, guidance=6.5, alpha=0.7,
              scheduler="euler-a", negative_prompt="blurry")


GRPC_PORT = free_port()
BOUNDS = dict(max_pixels=512 * 512, max_steps=400, max_body_bytes=4096)


@pytest.fixture(scope="module")
def server(tiny_export):
    with running_server(artifacts=str(tiny_export), replicas=2, max_batch_size=2, max_queue=2, timeout=120,
                        grpc_port=GRPC_PORT, **BOUNDS) as url:
        yield url


@pytest.fixture
def grpc_client(server):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}") as c:
        yield c


@pytest.fixture
def client(server):
    import tritonclient.http as httpclient

    with httpclient.InferenceServerClient(server.removeprefix("http://"), network_timeout=120) as c:
        yield c


def infer_inputs(binary: bool = True, client_module: str = "http", **parameters):
    """tritonclient (``http`` or ``grpc``) inputs for generation ``parameters`` (the CLI's flag names)."""
    import importlib

    httpclient = importlib.import_module(f"tritonclient.{client_module}")
    names = {"guidance": ("guidance_scale", np.float32), "alpha": ("resadapter_alpha", np.float32)}
    inputs = []
    for flag, value in parameters.items():
        name, dtype = names.get(flag, (flag, np.int64 if isinstance(value, int) else np.object_))
        data = np.array([value.encode() if dtype is np.object_ else value], dtype=dtype)
        tensor = httpclient.InferInput(name, [1], {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}[dtype])
        tensor.set_data_from_numpy(data, **({"binary_data": binary} if client_module == "http" else {}))
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
        "seed": "INT64", "guidance_scale": "FP32", "resadapter_alpha": "FP32", "scheduler": "BYTES",
        "prompt_weighting": "BYTES", "tile_size": "INT64", "tile_stride": "INT64", "circular": "BOOL"}
    assert metadata["outputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, 3]}]
    assert client.get_model_metadata("resadapter", model_version="1") == metadata
    assert client.is_model_ready("resadapter", model_version="1")


def test_versioned_infer_path(client):
    result = client.infer("resadapter", infer_inputs(prompt="versioned", width=128, height=128, steps=2), model_version="1")
    assert result.as_numpy("image").shape == (128, 128, 3)


BAD = [  # (CLI flags, the same as protocol inputs)
    ({"width": 100}, {"width": 100}),
    ({"width": 2048}, {"width": 2048}),
    ({"steps": 0}, {"steps": 0}),
    ({"scheduler": "bogus"}, {"scheduler": "bogus"}),
    ({"guidance": -1.0}, {"guidance_scale": -1.0}),
    ({"alpha": 3.5}, {"resadapter_alpha": 3.5}),
    ({"prompt": " "}, {"prompt": " "}),
]


@pytest.mark.parametrize("flags,inputs", BAD, ids=[next(iter(b[0])) + str(next(iter(b[0].values()))) for b in BAD])
def test_bad_parameters_get_400_with_the_cli_message(server, tiny_export, tmp_path, capsys, flags, inputs):
    from cli_harness import assert_one_line_error, run_main

    argv = ["generate", "--artifacts", str(tiny_export), "-o", str(tmp_path / "x.png"), "-q", "--prompt", "a fox",
            "--width", "128", "--height", "128"]
    for flag, value in flags.items():
        argv += [f"--{flag}", str(value)]
    cli_line = assert_one_line_error(run_main(argv, capsys), "")
    status, body, _ = infer_json(server, {"prompt": "a fox", "width": 128, "height": 128, **inputs})
    assert status == 400
    assert f"error: {body['error']}" == cli_line


def grpc_error(call) -> tuple[str, str]:
    """(status code name, details) of a tritonclient gRPC call that must fail."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as raised:
        call()
    return raised.value.status().removeprefix("StatusCode."), raised.value.message()


def test_grpc_image_equals_http_and_cli_generate(grpc_client, client, tiny_export, tmp_path, capsys):
    import tritonclient.grpc as grpcclient

    result = grpc_client.infer("resadapter", infer_inputs(client_module="grpc", **PARITY),
                               outputs=[grpcclient.InferRequestedOutput("image")], request_id="parity")
    image = result.as_numpy("image")
    assert result.get_response().id == "parity"
    assert image.dtype == np.uint8 and image.shape == (128, 192, 3)
    assert np.array_equal(image, cli_image(tiny_export, tmp_path, capsys, **PARITY))
    assert np.array_equal(image, client.infer("resadapter", infer_inputs(**PARITY)).as_numpy("image"))


def test_grpc_health_and_metadata_match_http(grpc_client, client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready() and grpc_client.is_model_ready("resadapter")
    assert grpc_client.is_model_ready("resadapter", model_version="1")
    assert grpc_client.get_model_metadata("resadapter", as_json=True) == {
        **client.get_model_metadata("resadapter"), "inputs": [{**i, "shape": ["1"]} for i in client.get_model_metadata("resadapter")["inputs"]],
        "outputs": [{"name": "image", "datatype": "UINT8", "shape": ["-1", "-1", "3"]}]}  # int64 shapes are JSON strings
    assert grpc_client.get_server_metadata(as_json=True)["name"] == client.get_server_metadata()["name"] == "resadapter-rt"
    assert grpc_error(lambda: grpc_client.get_model_metadata("other")) == (
        "NOT_FOUND", "unknown model 'other' version ''; this server serves 'resadapter' version '1'")


@pytest.mark.parametrize("flags,inputs", BAD[:3], ids=[next(iter(b[0])) + str(next(iter(b[0].values()))) for b in BAD[:3]])
def test_bad_parameters_get_invalid_argument_over_grpc(grpc_client, server, flags, inputs):
    status, body, _ = infer_json(server, {"prompt": "a fox", "width": 128, "height": 128, **inputs})
    assert status == 400
    parameters = {"prompt": "a fox", "width": 128, "height": 128, **flags}
    assert grpc_error(lambda: grpc_client.infer("resadapter", infer_inputs(client_module="grpc", **parameters))) == (
        "INVALID_ARGUMENT", body["error"])


BOUNDED = [  # parameters beyond the fixture's BOUNDS, and the message
    (dict(width=576, height=512), "576x512 is 294912 pixels, above this server's --max-pixels 262144; ask for a smaller width x height"),
    (dict(width=1024, height=264), "1024x264 is 270336 pixels, above this server's --max-pixels 262144; ask for a smaller width x height"),
    (dict(steps=401), "steps 401 is above this server's --max-steps 400; ask for 400 or fewer"),
    (dict(steps=5000), "steps 5000 is above this server's --max-steps 400; ask for 400 or fewer"),
]


@pytest.mark.parametrize("parameters,message", BOUNDED, ids=["pixels", "odd-pixels", "steps", "steps-past-scheduler"])
def test_requests_beyond_the_bounds_are_refused_on_both_faces(server, grpc_client, parameters, message):
    started = time.perf_counter()
    status, body, _ = infer_json(server, {"prompt": "a fox", "width": 128, "height": 128, **parameters})
    assert (status, body) == (400, {"error": message})
    assert grpc_error(lambda: grpc_client.infer("resadapter", infer_inputs(
        client_module="grpc", **{"prompt": "a fox", "width": 128, "height": 128, **parameters}))) == ("INVALID_ARGUMENT", message)
    assert time.perf_counter() - started < 5, "refused requests must not reach a replica"
    assert grpc_client.is_server_ready()


def test_body_over_the_limit_is_413_before_parsing_and_invalid_argument_over_grpc(server, grpc_client):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server}/v2/models/resadapter/infer", data=b"x" * 5000, method="POST")  # not even JSON
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    expected = ("the request is 5000 bytes, above this server's --max-body-bytes 4096; send a smaller request "
                "(prompts are text: a few KiB)")
    assert raised.value.code == 413 and json.loads(raised.value.read()) == {"error": expected}
    code, message = grpc_error(lambda: grpc_client.infer("resadapter", infer_inputs(client_module="grpc", prompt="x" * 5000)))
    assert code == "INVALID_ARGUMENT" and message.startswith("the request is 50") and "--max-body-bytes 4096" in message
    assert metric(server, 'resadapter_requests_total{outcome="too_large"}') >= 2
    assert infer_json(server, dict(prompt="after", width=128, height=128, steps=2))[0] == 200


def test_grpc_deadline_is_deadline_exceeded(grpc_client):
    started = time.perf_counter()
    code, message = grpc_error(lambda: grpc_client.infer("resadapter", infer_inputs(client_module="grpc", **LONG),
                                                         timeout=2_000_000))
    assert (code, message) == ("DEADLINE_EXCEEDED", "the deadline of 2 s passed before the image was ready; the request was dropped")
    assert time.perf_counter() - started < 8


@pytest.mark.parametrize("body,expected", [
    (b"not json", "request body is not JSON"),
    (b'{"inputs": [{"name": "width", "shape": [1], "datatype": "INT64", "data": [128]}]}', "input prompt is missing"),
    (b'{"inputs": [{"name": "prompt", "shape": [1], "datatype": "INT64", "data": [1]}]}', "input prompt has datatype INT64; send BYTES"),
    (b'{"inputs": [{"name": "size", "shape": [1], "datatype": "INT64", "data": [1]}]}', "unknown input 'size'"),
    (b'{"inputs": [{"name": "prompt", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}', "input prompt has 2 elements"),
])
def test_malformed_requests_get_400(server, body, expected):
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{server}/v2/models/resadapter/infer", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=60)
    assert raised.value.code == 400
    assert json.loads(raised.value.read())["error"].startswith(expected)


def test_generation_defaults_are_the_clis():
    from resadapter_rt.cli import build_parser
    from resadapter_rt.serve.options import GENERATION_DEFAULTS

    args = build_parser().parse_args(["generate", "--artifacts", "x", "--width", "8", "--height", "8", "--prompt", "p"])
    assert GENERATION_DEFAULTS == {"steps": args.steps, "guidance_scale": args.guidance, "seed": args.seed}


def test_equal_concurrent_requests_share_a_unet_batch(server, tiny_export, tmp_path, capsys):
    from concurrent.futures import ThreadPoolExecutor

    common = dict(prompt="a lighthouse", width=128, height=128, steps=3)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda seed: infer_json(server, {**common, "seed": seed}), range(8)))
    assert [status for status, _, _ in answers] == [200] * 8
    batched = metric(server, "resadapter_batch_size_count") - metric(server, 'resadapter_batch_size_bucket{le="1.0"}')
    assert batched >= 2, "no two of 8 concurrent equal requests shared a UNet batch"
    for seed, (_, body, _) in enumerate(answers):
        output = body["outputs"][0]
        image = np.array(output["data"], dtype=np.uint8).reshape(output["shape"])
        expected = cli_image(tiny_export, tmp_path, capsys, **common, seed=seed)
        assert np.abs(image.astype(int) - expected).max() <= 1, f"seed {seed}"


LONG = dict(prompt="a long job", width=512, height=512, steps=400)  # minutes of UNet steps on a CPU (BOUNDS allow it)


def test_deadline_gives_504_and_drops_the_work(server):
    dropped_before = sum(s["dropped"] for s in replica_stats().values())
    status, body, seconds = infer_json(server, LONG, timeout_us=3_000_000)
    assert status == 504 and "deadline of 3 s passed" in body["error"]
    assert seconds < 10
    assert wait_for(lambda: sum(s["dropped"] for s in replica_stats().values()) > dropped_before), "the work went on"
    assert infer_json(server, dict(prompt="after", width=128, height=128, steps=2))[0] == 200


def test_client_disconnect_frees_its_slot(server):
    import http.client
    import json

    dropped_before = sum(s["dropped"] for s in replica_stats().values())
    connection = http.client.HTTPConnection(server.removeprefix("http://"), timeout=60)
    inputs = [{"name": k, "shape": [1], "datatype": "BYTES" if isinstance(v, str) else "INT64", "data": [v]} for k, v in LONG.items()]
    connection.request("POST", "/v2/models/resadapter/infer", body=json.dumps({"inputs": inputs}))
    assert wait_for(lambda: sum(s["active"] for s in replica_stats().values()) == 1), "the request never reached a replica"
    connection.close()
    assert wait_for(lambda: sum(s["dropped"] for s in replica_stats().values()) > dropped_before), "the work went on"
    assert metric(server, 'resadapter_requests_total{outcome="cancelled"}') >= 1
    assert infer_json(server, dict(prompt="after", width=128, height=128, steps=2))[0] == 200


def test_full_queue_gives_503_at_once(server, grpc_client):
    from concurrent.futures import ThreadPoolExecutor

    # 2 replicas x 2 x max_batch_size 2 held by the replicas + 2 waiting (max_queue) = 10 in the server
    counted = metric(server, 'resadapter_requests_total{outcome="queue_full"}')
    with ThreadPoolExecutor(14) as pool:
        futures = [pool.submit(infer_json, server, {**LONG, "seed": i}, timeout_us=8_000_000) for i in range(14)]
        assert wait_for(lambda: metric(server, "resadapter_queue_depth") == 10, timeout=5, every=0.1)
        code, message = grpc_error(lambda: grpc_client.infer("resadapter", infer_inputs(client_module="grpc", **LONG)))
        answers = [f.result() for f in futures]
    assert code == "RESOURCE_EXHAUSTED" and message.startswith("the queue is full (10 requests in the server")
    refused = [(status, body, seconds) for status, body, seconds in answers if status == 503]
    assert len(refused) == 4 and all("queue is full" in body["error"] and seconds < 2 for _, body, seconds in refused), answers
    assert [status for status, _, _ in answers].count(504) == 10
    assert metric(server, 'resadapter_requests_total{outcome="queue_full"}') == counted + 5
    assert wait_for(lambda: metric(server, "resadapter_queue_depth") == 0)
    assert infer_json(server, dict(prompt="after", width=128, height=128, steps=2))[0] == 200


def test_killed_replica_is_restarted_while_the_other_serves(server):
    import os
    import signal
    from concurrent.futures import ThreadPoolExecutor

    before = replica_stats()
    victim = next(iter(before))
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: running_replicas() < 2, timeout=30, every=0.2), "Ray did not notice the death"
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: infer_json(server, dict(prompt="meanwhile", width=128, height=128, steps=2, seed=i)), range(4)))
    assert [status for status, _, _ in answers] == [200] * 4, answers
    assert infer_json(server, dict(prompt="meanwhile", width=128, height=128, steps=2))[0] == 200
    assert wait_for(lambda: running_replicas() == 2, timeout=300), "the killed replica was not restarted"
    after = replica_stats()
    assert victim not in after and len(after) == 2


def test_readiness_is_false_while_no_replica_can_serve(server):
    import os
    import signal
    import urllib.error
    import urllib.request

    def ready() -> bool:
        try:
            return urllib.request.urlopen(f"{server}/v2/health/ready", timeout=30).status == 200
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            return False

    assert ready()
    for pid in replica_stats():
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not ready(), timeout=30), "readiness stayed true with every replica dead"
    assert wait_for(ready, timeout=300), "no replica came back"
    assert infer_json(server, dict(prompt="back", width=128, height=128, steps=2))[0] == 200


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications["resadapter"].deployments["ResAdapterModel"]
    return deployment.replica_states.get("RUNNING", 0)


def test_serve_deploy_config_example_builds_the_application(tiny_export):
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from conftest import REPO

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "examples" / "ray-serve.yaml").read_text()))
    (application,) = config.applications
    module, name = application.import_path.split(":")
    builder = getattr(__import__(module, fromlist=[name]), name)
    args = {**application.args, "artifacts": str(tiny_export), "backend": "onnxruntime"}
    app = builder(args)
    assert type(app).__name__ == "Application"
    from ray.serve.config import gRPCOptions

    from resadapter_rt.serve.grpc_protocol import add_servicer_to_server

    grpc_options = gRPCOptions(**config.grpc_options.model_dump())
    assert grpc_options.grpc_servicer_func_callable == [add_servicer_to_server]


def test_prometheus_metrics(server):
    ok_before = metric(server, 'resadapter_requests_total{outcome="ok"}')
    latencies_before = metric(server, "resadapter_request_latency_seconds_count")
    assert infer_json(server, dict(prompt="counted", width=128, height=128, steps=2))[0] == 200
    assert infer_json(server, dict(prompt="counted", width=100, height=128, steps=2))[0] == 400
    assert metric(server, 'resadapter_requests_total{outcome="ok"}') == ok_before + 1
    assert metric(server, 'resadapter_requests_total{outcome="bad_request"}') >= 1
    assert metric(server, "resadapter_request_latency_seconds_count") == latencies_before + 1
    assert metric(server, "resadapter_unet_steps_per_second") > 0
    assert metric(server, "resadapter_queue_depth") == 0

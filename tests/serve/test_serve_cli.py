"""`resadapter-rt serve` as a user runs it: bad options fail at once; a real run serves, stops on Ctrl-C, leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import psutil
import pytest

from cli_harness import REPO, assert_bad_input_touches_nothing
from serve_fixtures import free_port, infer_json, metric, tiny_export, wait_for  # noqa: F401 (fixture)


@pytest.mark.parametrize("flags,expected", [
    (["--replicas", "0"], "--replicas 0 must be an integer >= 1"),
    (["--max-batch-size", "0"], "--max-batch-size 0 must be an integer >= 1"),
    (["--max-queue", "0"], "--max-queue 0 must be an integer >= 1"),
    (["--timeout", "0"], "--timeout 0.0 must be a positive number of seconds"),
    (["--port", "70000"], "--port 70000 is not a TCP port; use 1-65535"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
    (["--max-steps", "0"], "--max-steps 0 must be an integer >= 1"),
    (["--max-pixels", "100"], "--max-pixels 100 must be an integer >= 4096"),
    (["--max-body-bytes", "10"], "--max-body-bytes 10 must be an integer >= 1024"),
    (["--grpc-port", "0"], "--grpc-port 0 is not a TCP port; use 1-65535"),
    (["--port", "9100", "--grpc-port", "9100"], "--grpc-port 9100 is also the HTTP --port; give gRPC a port of its own"),
    (["--drain-timeout", "0"], "--drain-timeout 0.0 must be a positive number of seconds"),
    (["--replica-cpus", "-1"], "--replica-cpus -1.0 must be a positive number"),
])
def test_bad_options_fail_before_ray_starts(tmp_path, monkeypatch, capsys, tiny_export, flags, expected):
    assert_bad_input_touches_nothing(tmp_path, ["serve", "--artifacts", str(tiny_export), *flags], expected, monkeypatch, capsys)


def test_bound_defaults_come_from_the_export_and_a1111(tiny_export):
    from resadapter_rt.export.exporter import read_manifest
    from resadapter_rt.serve.bounds import artifact_max_pixels
    from resadapter_rt.serve.options import ServeOptions

    _, high = read_manifest(tiny_export)["pixel_range"]
    options = ServeOptions(artifacts=str(tiny_export)).checked()
    assert (options.max_pixels, options.max_steps, options.max_body_bytes) == (high * high, 150, 1 << 20)
    assert artifact_max_pixels(tiny_export) == (high * high, "the export's pixel range: its largest side, squared")
    assert ServeOptions(artifacts=str(tiny_export), max_pixels=65536).checked().max_pixels == 65536


def test_engine_directory_default_is_its_largest_profile(tiny_export, tmp_path):
    from resadapter_rt.serve.bounds import artifact_max_pixels

    engine = tmp_path / "engine"
    shutil.copytree(tiny_export, engine / "onnx")
    (engine / "manifest.json").write_text(json.dumps({"profiles": [{"spec": "256-512,opt=512x512"},
                                                                  {"spec": "384-768@0.5-2,opt=768x384"}]}))
    assert artifact_max_pixels(engine) == (768 * 768, "the engine profiles' largest side, squared")


def test_missing_artifacts_fail_before_ray_starts(tmp_path, monkeypatch, capsys):
    assert_bad_input_touches_nothing(tmp_path, ["serve", "--artifacts", "nowhere"], "nowhere: no such artifacts directory",
                                     monkeypatch, capsys)


@contextmanager
def serve_process(artifacts, *flags: str):
    """``resadapter-rt serve`` in a subprocess, once it announced itself: (process, URL, its output lines so far)."""
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "resadapter_rt.cli", "serve", "--artifacts", str(artifacts),
                               "--port", str(port), "--max-batch-size", "2", *flags], env=environment,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        announced = f"at {url}: Open Inference Protocol model 'resadapter'"
        while not any(announced in line for line in lines):  # printed once serve.run returned
            assert time.monotonic() < deadline and server.poll() is None, "".join(lines)
            time.sleep(0.5)
        yield server, url, lines
        reader.join(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def stops_cleanly(server: subprocess.Popen, tree: list[psutil.Process], lines: list[str], within: float) -> float:
    """``server`` exits 0 within ``within`` seconds with no stack dump, leaving none of ``tree`` running; when it exited."""
    server.wait(timeout=within)
    exited = time.monotonic()
    output = "".join(lines)
    assert server.returncode == 0, output
    assert "Traceback" not in output and "Fatal Python error" not in output and "stopped" in output, output
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
    return exited


@pytest.mark.slow
def test_serve_command_serves_and_stops_cleanly_on_ctrl_c(tiny_export):
    with serve_process(tiny_export) as (server, url, lines):
        assert "request bounds: --max-pixels" in "".join(lines) and "--max-steps 150" in "".join(lines)
        assert urllib.request.urlopen(f"{url}/v2/health/ready", timeout=30).status == 200
        assert infer_json(url, dict(prompt="from the CLI", width=128, height=128, steps=2))[0] == 200
        tree = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGINT)
        stops_cleanly(server, tree, lines, within=120)


def ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10).status == 200
    except urllib.error.HTTPError as exc:
        assert exc.code == 503
        return False


@pytest.mark.parametrize("drain,steps,expected", [(120, 40, 200), (3, 150, 503)], ids=["finishes", "drain-timeout-passes"])
def test_sigterm_drains_the_request_in_flight_then_exits_0(tiny_export, drain, steps, expected):
    from concurrent.futures import ThreadPoolExecutor

    with serve_process(tiny_export, "--drain-timeout", str(drain)) as (server, url, lines), ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(infer_json, url, dict(prompt="in flight", width=512, height=512, steps=steps))
        assert wait_for(lambda: metric(url, "resadapter_queue_depth") == 1, timeout=30, every=0.1)
        tree = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert wait_for(lambda: not ready(url), timeout=5, every=0.1), "readiness stayed true after SIGTERM"
        status, body, _ = infer_json(url, dict(prompt="too late", width=128, height=128, steps=2))
        assert (status, body) == (503, {"error": "the server is shutting down and takes no new requests; retry on another instance"})
        assert not in_flight.done(), "the request in flight finished before the checks above: give it more steps"
        status, body, _ = in_flight.result(timeout=drain + 60)
        assert status == expected, body
        if expected == 200:
            assert body["outputs"][0]["shape"] == [512, 512, 3]
        else:
            assert body["error"].startswith("the server shut down before the image was ready (the drain timeout passed)")
        seconds = stops_cleanly(server, tree, lines, within=drain + 60) - signalled
        print(f"SIGTERM to exit 0: {seconds:.1f} s (--drain-timeout {drain})")  # the note quotes these
        assert seconds < drain + 30, "the drain plus Serve's and Ray's shutdown took too long"
        assert "1 request(s) in flight" in "".join(lines)


def test_gpu_backend_without_a_gpu_is_one_line_not_a_hang(tmp_path, monkeypatch, capsys, tiny_export):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert_bad_input_touches_nothing(tmp_path, ["serve", "--artifacts", str(tiny_export), "--backend", "onnxruntime-tensorrt",
                                                "--port", str(free_port())],
                                     "--backend onnxruntime-tensorrt with --replicas 1 needs 1 GPU(s) (one per replica); this machine has 0 for Ray",
                                     monkeypatch, capsys)
    import ray

    assert not ray.is_initialized()

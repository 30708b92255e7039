"""`resadapter-rt serve` as a user runs it: bad options fail at once; a real run serves, stops on Ctrl-C, leaves nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import psutil
import pytest

from cli_harness import REPO, assert_bad_input_touches_nothing
from serve_fixtures import free_port, infer_json, tiny_export  # noqa: F401 (fixture)


@pytest.mark.parametrize("flags,expected", [
    (["--replicas", "0"], "--replicas 0 must be an integer >= 1"),
    (["--max-batch-size", "0"], "--max-batch-size 0 must be an integer >= 1"),
    (["--max-queue", "0"], "--max-queue 0 must be an integer >= 1"),
    (["--timeout", "0"], "--timeout 0.0 must be a positive number of seconds"),
    (["--port", "70000"], "--port 70000 is not a TCP port; use 1-65535"),
    (["--backend", "tpu"], "unknown backend 'tpu'"),
])
def test_bad_options_fail_before_ray_starts(tmp_path, monkeypatch, capsys, tiny_export, flags, expected):
    assert_bad_input_touches_nothing(tmp_path, ["serve", "--artifacts", str(tiny_export), *flags], expected, monkeypatch, capsys)


def test_missing_artifacts_fail_before_ray_starts(tmp_path, monkeypatch, capsys):
    assert_bad_input_touches_nothing(tmp_path, ["serve", "--artifacts", "nowhere"], "nowhere: no such artifacts directory",
                                     monkeypatch, capsys)


@pytest.mark.slow
def test_serve_command_serves_and_stops_cleanly_on_ctrl_c(tiny_export):
    port = free_port()
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "resadapter_rt.cli", "serve", "--artifacts", str(tiny_export),
                               "--port", str(port), "--max-batch-size", "2"], env=environment,
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
        assert urllib.request.urlopen(f"{url}/v2/health/ready", timeout=30).status == 200
        assert infer_json(url, dict(prompt="from the CLI", width=128, height=128, steps=2))[0] == 200
        tree = psutil.Process(server.pid).children(recursive=True)
        server.send_signal(signal.SIGINT)
        server.wait(timeout=120)
        reader.join(timeout=30)
        assert server.returncode == 0, "".join(lines)
        assert "stopped" in "".join(lines)
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


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

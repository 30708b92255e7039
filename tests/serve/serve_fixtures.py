"""Serving test helpers: a tiny dynamic-alpha SD1.5 export, a Ray Serve server on loopback, the CLI image."""

from __future__ import annotations

import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image

from cli_harness import run_main
from conftest import quiet

pytest.importorskip("ray.serve", reason="serving tests need the serve extra: pip install -e '.[serve]'")
pytest.importorskip("tritonclient.http", reason="serving tests need tritonclient[http] (the test extra)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory) -> Path:
    """One export per test session, whichever module asks first (each importing module gets its own fixture)."""
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline

    root = tmp_path_factory.getbasetemp() / "serve-tiny-sd15"
    if not (root / "manifest.json").is_file():
        export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic",
                                      validation_sizes=((128, 128, 1),)), root, progress=quiet)
    return root


def ray_processes() -> list[psutil.Process]:
    """Ray's processes started from this test process (gcs, raylet, workers, replicas)."""
    return [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.is_running()]


@contextmanager
def running_server(**options):
    """Serve ``options`` on a free loopback port; afterwards no process of it may be left."""
    from resadapter_rt.serve.lifecycle import serving
    from resadapter_rt.serve.options import ServeOptions

    checked = ServeOptions(port=free_port(), **options).checked()
    with serving(checked, num_cpus=2) as url:
        started = ray_processes()
        yield url
    _, alive = psutil.wait_procs(started + ray_processes(), timeout=20)
    assert not alive, f"processes left after shutdown: {[(p.pid, p.name()) for p in alive]}"


def cli_image(artifacts: Path, tmp_path: Path, capsys, **parameters) -> np.ndarray:
    """What ``resadapter-rt generate`` writes for ``parameters`` (CLI flag names), as a uint8 array."""
    out = tmp_path / "cli.png"
    argv = ["generate", "--artifacts", str(artifacts), "-o", str(out), "-q"]
    for name, value in parameters.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    result = run_main(argv, capsys)
    assert result.returncode == 0, result.stderr
    return np.asarray(Image.open(out).convert("RGB"))


def infer_json(url: str, parameters: dict, timeout_us: int | None = None, wait: float = 300) -> tuple[int, dict, float]:
    """POST a JSON infer request of ``parameters`` (protocol input names); (HTTP status, body, seconds)."""
    import json
    import time
    import urllib.error
    import urllib.request

    types = {str: "BYTES", int: "INT64", float: "FP32"}
    body = {"inputs": [{"name": k, "shape": [1], "datatype": types[type(v)], "data": [v]} for k, v in parameters.items()]}
    if timeout_us is not None:
        body["parameters"] = {"timeout": timeout_us}
    request = urllib.request.Request(f"{url}/v2/models/resadapter/infer", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=wait) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    return status, json.loads(payload), time.perf_counter() - started


def replica_stats(expected: int = 2, attempts: int = 40) -> dict[int, dict]:
    """``ResAdapterModel.stats`` of every replica, by process id (calls until ``expected`` replicas answered)."""
    from ray import serve

    handle = serve.get_deployment_handle("ResAdapterModel", app_name="resadapter")
    seen: dict[int, dict] = {}
    for _ in range(attempts):
        for stats in [r.result(timeout_s=60) for r in [handle.stats.remote() for _ in range(4)]]:
            seen[stats["pid"]] = stats
        if len(seen) >= expected:
            break
    return seen


def metric(url: str, name: str) -> float:
    """One sample of ``GET /metrics``."""
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} not in /metrics"
    return values[0]


def wait_for(condition, timeout: float = 60, every: float = 0.5) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every)
    return False

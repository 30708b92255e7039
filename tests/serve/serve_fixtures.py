"""Serving test helpers: a tiny dynamic-alpha SD1.5 export, a Ray Serve server on loopback, the CLI image."""

from __future__ import annotations

import os
import socket
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
    from resadapter_rt.export.exporter import ExportOptions, export_pipeline

    root = tmp_path_factory.mktemp("serve") / "tiny-sd15"
    export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha="dynamic", validation_sizes=((128, 128, 1),)),
                    root, progress=quiet)
    return root


def ray_processes() -> list[psutil.Process]:
    """Ray's processes started from this test process (gcs, raylet, workers, replicas)."""
    return [p for p in psutil.Process(os.getpid()).children(recursive=True) if p.is_running()]


@contextmanager
def running_server(**options):
    """Serve ``options`` on a free loopback port; afterwards no process of it may be left."""
    from resadapter_rt.serve.app import serving
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

"""``resadapter-rt serve`` options, checked before Ray starts, and the request defaults (the CLI's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ResAdapterRTError
from .bounds import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_STEPS, RequestBounds, artifact_max_pixels

# what `resadapter-rt generate` uses when a flag is left out (tests/serve checks they stay equal)
GENERATION_DEFAULTS = {"steps": 25, "guidance_scale": 7.0, "seed": 0}
GPU_BACKENDS = ("tensorrt", "onnxruntime-tensorrt")


def export_directory(artifacts: Path) -> Path:
    """The export inside an artifacts directory: an engine directory's onnx/, else the directory itself."""
    return artifacts / "onnx" if (artifacts / "onnx").is_dir() else artifacts


@dataclass(frozen=True)
class ServeOptions:
    """Where the model comes from and how the service behaves under load."""

    artifacts: str
    backend: str = "onnxruntime"
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    max_batch_size: int = 4
    max_queue: int = 32
    timeout: float = 300.0
    address: str | None = None  # an existing Ray cluster ("auto", "ray://host:10001"); None: a local Ray
    grpc_port: int | None = None  # the protocol's gRPC service on Serve's gRPC proxy; None: HTTP only
    max_pixels: int | None = None  # None: from the artifacts (bounds.artifact_max_pixels)
    max_steps: int = DEFAULT_MAX_STEPS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    drain_timeout: float = 30.0  # on SIGTERM/SIGINT: how long requests in flight may still run
    replica_cpus: float = 1.0  # Ray CPUs per model replica (CPU backends)

    def checked(self) -> "ServeOptions":
        """The options, or a one-line error naming the bad one; the export is read here, not in a replica."""
        from ..export.exporter import check_export_files, read_manifest
        from ..runtime.runners import check_backend

        check_backend(self.backend)
        for name, low in (("replicas", 1), ("max_batch_size", 1), ("max_queue", 1), ("max_steps", 1),
                          ("max_body_bytes", 1024), ("max_pixels", 64 * 64)):
            value = getattr(self, name)
            if (name != "max_pixels" or value is not None) and (not isinstance(value, int) or value < low):
                raise ResAdapterRTError(f"--{name.replace('_', '-')} {value} must be an integer >= {low}")
        for name in ("port", "grpc_port"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= 65535:
                raise ResAdapterRTError(f"--{name.replace('_', '-')} {value} is not a TCP port; use 1-65535")
        if self.grpc_port == self.port:
            raise ResAdapterRTError(f"--grpc-port {self.grpc_port} is also the HTTP --port; give gRPC a port of its own")
        for name, unit in (("timeout", " of seconds"), ("drain_timeout", " of seconds"), ("replica_cpus", "")):
            if not getattr(self, name) > 0:
                raise ResAdapterRTError(f"--{name.replace('_', '-')} {getattr(self, name)} must be a positive number{unit}")
        directory = Path(self.artifacts)
        if not directory.is_dir():
            raise ResAdapterRTError(f"{directory}: no such artifacts directory; create it with "
                                    f"`resadapter-rt export --out {directory} ...`")
        export_dir = export_directory(directory)
        check_export_files(export_dir, read_manifest(export_dir))
        max_pixels = self.max_pixels if self.max_pixels is not None else artifact_max_pixels(directory)[0]
        return ServeOptions(**{**asdict(self), "artifacts": str(directory.resolve()), "max_pixels": max_pixels})

    @property
    def bounds(self) -> RequestBounds:
        """The per-request bounds of checked options."""
        return RequestBounds(self.max_pixels, self.max_steps, self.max_body_bytes)

    @property
    def replica_resources(self) -> dict[str, Any]:
        """Ray resources of one model replica: a GPU for the TensorRT backends (and torch where CUDA is), one CPU otherwise."""
        import torch

        gpu = self.backend in GPU_BACKENDS or (self.backend == "torch" and torch.cuda.is_available())
        return {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": self.replica_cpus}

"""``resadapter-rt serve`` options, checked before Ray starts, and the request defaults (the CLI's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import ResAdapterRTError

# what `resadapter-rt generate` uses when a flag is left out (tests/serve checks they stay equal)
GENERATION_DEFAULTS = {"steps": 25, "guidance_scale": 7.0, "seed": 0}
GPU_BACKENDS = ("tensorrt", "onnxruntime-tensorrt")


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

    def checked(self) -> "ServeOptions":
        """The options, or a one-line error naming the bad one; the export is read here, not in a replica."""
        from ..export.exporter import check_export_files, read_manifest
        from ..runtime.runners import check_backend

        check_backend(self.backend)
        for name, low in (("replicas", 1), ("max_batch_size", 1), ("max_queue", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ResAdapterRTError(f"--{name.replace('_', '-')} {value} must be an integer >= {low}")
        if not 1 <= self.port <= 65535:
            raise ResAdapterRTError(f"--port {self.port} is not a TCP port; use 1-65535")
        if not self.timeout > 0:
            raise ResAdapterRTError(f"--timeout {self.timeout} must be a positive number of seconds")
        directory = Path(self.artifacts)
        if not directory.is_dir():
            raise ResAdapterRTError(f"{directory}: no such artifacts directory; create it with "
                                    f"`resadapter-rt export --out {directory} ...`")
        export_dir = directory / "onnx" if (directory / "onnx").is_dir() else directory
        check_export_files(export_dir, read_manifest(export_dir))
        return ServeOptions(**{**asdict(self), "artifacts": str(directory.resolve())})

    @property
    def replica_resources(self) -> dict[str, Any]:
        """Ray resources of one model replica: a GPU for the TensorRT backends (and torch where CUDA is), one CPU otherwise."""
        import torch

        gpu = self.backend in GPU_BACKENDS or (self.backend == "torch" and torch.cuda.is_available())
        return {"num_cpus": 1, "num_gpus": 1} if gpu else {"num_cpus": 1}

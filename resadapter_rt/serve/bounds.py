"""Bounds on one request, so that no request can hold a replica for longer than the operator allows.

``--max-pixels`` (width x height), ``--max-steps`` and ``--max-body-bytes`` are checked by the
ingress before a request is queued: beyond them HTTP 400 (413 for the body, checked before parsing)
or gRPC INVALID_ARGUMENT, with a one-line message naming the flag. The pixel default comes from the
artifacts: an engine directory's largest profile, else the export's pixel range (its largest side, squared).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ResAdapterRTError

DEFAULT_MAX_STEPS = 150  # AUTOMATIC1111's web UI limit
DEFAULT_MAX_BODY_BYTES = 1 << 20  # requests carry text and scalars: a 1 MiB body holds any prompt the text encoder reads


def artifact_max_pixels(directory: Path) -> tuple[int, str]:
    """The largest width x height the artifacts serve, and where that number comes from."""
    from ..engines.profiles import FAMILY_PIXEL_RANGE, ResolutionProfile
    from ..export.exporter import read_manifest
    from .options import export_directory

    export_dir = export_directory(directory)
    engine_manifest = directory / "manifest.json"
    if export_dir != directory and engine_manifest.is_file():
        specs = json.loads(engine_manifest.read_text()).get("profiles") or []
        profiles = [ResolutionProfile.parse(p["spec"]) for p in specs]
        if profiles:
            return max(p.max_px ** 2 for p in profiles), "the engine profiles' largest side, squared"
    manifest = read_manifest(export_dir)
    _, high = manifest.get("pixel_range") or FAMILY_PIXEL_RANGE[manifest["family"]]
    return int(high) ** 2, "the export's pixel range: its largest side, squared"


@dataclass(frozen=True)
class RequestBounds:
    """What one request may ask for."""

    max_pixels: int
    max_steps: int = DEFAULT_MAX_STEPS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    def check_body(self, size: int) -> None:
        """Before parsing: a body (or gRPC message) larger than ``--max-body-bytes`` is refused."""
        if size > self.max_body_bytes:
            raise ResAdapterRTError(f"the request is {size} bytes, above this server's --max-body-bytes {self.max_body_bytes}; "
                                    "send a smaller request (prompts are text: a few KiB)")

    def check(self, parameters: dict[str, Any], training_size: int, default_steps: int) -> None:
        """After parsing: the size and steps asked for (or their defaults) within the bounds."""
        width, height = parameters.get("width", training_size), parameters.get("height", training_size)
        if width * height > self.max_pixels:
            raise ResAdapterRTError(f"{width}x{height} is {width * height} pixels, above this server's --max-pixels "
                                    f"{self.max_pixels}; ask for a smaller width x height")
        steps = parameters.get("steps", default_steps)
        if steps > self.max_steps:
            raise ResAdapterRTError(f"steps {steps} is above this server's --max-steps {self.max_steps}; "
                                    f"ask for {self.max_steps} or fewer")

    def describe(self) -> str:
        return (f"--max-pixels {self.max_pixels} (up to {int(self.max_pixels ** 0.5)}x{int(self.max_pixels ** 0.5)}), "
                f"--max-steps {self.max_steps}, --max-body-bytes {self.max_body_bytes}")

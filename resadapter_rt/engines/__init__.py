"""Stage 3, engines: resolution profiles (all pixel -> latent shape math), TensorRT engine builds
from a validated export with their manifest and cache keys, the TensorRT runner, ONNX Runtime's
TensorRT provider options, and ``inspect``'s description of artifacts. TensorRT is imported
lazily, only where an engine is built or run. It may import ``export``, ``models`` and the
top-level cross-cutting modules; never ``runtime`` or ``cli``.
"""

from .build import BuildOptions, build_engines, check_engine_manifest
from .profiles import FAMILY_PIXEL_RANGE, ResolutionProfile, parse_size, preset_for

__all__ = ["BuildOptions", "FAMILY_PIXEL_RANGE", "ResolutionProfile", "build_engines", "check_engine_manifest",
           "parse_size", "preset_for"]

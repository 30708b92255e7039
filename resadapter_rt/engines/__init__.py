"""Stage 3, engines: resolution profiles (all pixel -> latent shape math), TensorRT and TensorRT-RTX
engine builds from a validated export (the export kept beside them, reused while its sources are
unchanged), the engine manifest with its checks and cache keys, the TensorRT runner, ONNX Runtime's
TensorRT provider options, and ``inspect``'s description of artifacts. TensorRT is imported lazily,
only where an engine is built (in a child process) or run. It may import ``export``, ``models`` and
the top-level cross-cutting modules; never ``runtime`` or ``cli``.
"""

from .build import BuildOptions, build_engines
from .manifest import check_engine_manifest, read_engine_manifest
from .profiles import FAMILY_PIXEL_RANGE, ResolutionProfile, parse_size, preset_for
from .runtimes import RUNTIME_CHOICES, resolve_runtime

__all__ = ["BuildOptions", "FAMILY_PIXEL_RANGE", "RUNTIME_CHOICES", "ResolutionProfile", "build_engines", "check_engine_manifest",
           "parse_size", "preset_for", "read_engine_manifest", "resolve_runtime"]

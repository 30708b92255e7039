"""Stage 2, ONNX export: what each component exports (names, dynamic axes, wrappers), the
dynamic-alpha LoRA branch, fp16 copies, graph cleanup and saving, ONNX Runtime fusion for the
``cuda`` target, and ``export_pipeline`` with its validation and manifest. It may import
``models`` and the top-level cross-cutting modules; never ``engines``, ``runtime`` or ``cli``.
"""

from .exporter import ExportOptions, export_pipeline, read_manifest

__all__ = ["ExportOptions", "export_pipeline", "read_manifest"]

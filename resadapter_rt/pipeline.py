"""Compatibility path: ``resadapter_rt.pipeline.ResAdapterPipeline`` lives in ``resadapter_rt.runtime``."""

from .runtime.pipeline import GenerationOutput, ResAdapterPipeline, Timings

__all__ = ["GenerationOutput", "ResAdapterPipeline", "Timings"]

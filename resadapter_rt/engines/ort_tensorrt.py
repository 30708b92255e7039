"""ONNX Runtime's TensorRT execution provider with our resolution profiles (onnxruntime-gpu only)."""

from __future__ import annotations

from pathlib import Path

from .profiles import ResolutionProfile


def _shapes_text(shapes: dict[str, tuple[int, ...]]) -> str:
    return ",".join(f"{name}:{'x'.join(map(str, shape))}" for name, shape in shapes.items())


def tensorrt_provider_options(component: str, profiles: list[ResolutionProfile], dims: dict, cache_dir: Path,
                              precision: str = "fp16") -> dict[str, str]:
    """``TensorrtExecutionProvider`` options: explicit min/opt/max profiles and an engine cache.

    Several profiles are joined as ORT expects (comma-separated shapes per profile, repeated names).
    """
    mins, opts, maxs = [], [], []
    for profile in profiles:
        shapes = profile.component_shapes(component, dims)
        mins.append(_shapes_text({n: s[0] for n, s in shapes.items()}))
        opts.append(_shapes_text({n: s[1] for n, s in shapes.items()}))
        maxs.append(_shapes_text({n: s[2] for n, s in shapes.items()}))
    return {
        "trt_profile_min_shapes": ",".join(mins), "trt_profile_opt_shapes": ",".join(opts),
        "trt_profile_max_shapes": ",".join(maxs), "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": "True",
        "trt_fp16_enable": str(precision == "fp16"), "trt_bf16_enable": str(precision == "bf16"),
    }

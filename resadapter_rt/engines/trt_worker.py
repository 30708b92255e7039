"""Build one TensorRT / TensorRT-RTX engine with polygraphy, in a process of its own.

Run as ``python trt_worker.py JOB.json`` (a script, so the child imports polygraphy and TensorRT
but not torch or this package). Polygraphy picks TensorRT or TensorRT-RTX once per process, when
``polygraphy.backend.trt`` is first imported (``POLYGRAPHY_USE_TENSORRT_RTX``); a child process per
build lets one parent build both kinds, keeps the builder's memory out of the parent, and lets a
killed build leave only its temporary file, which the parent removes.

JOB: ``{"runtime": "tensorrt" | "tensorrt-rtx", "onnx": path, "output": path, "profiles":
[{input: [min, opt, max]}], "compute_capabilities": [[8, 6], ...] | null, "optimization_level": int,
"precision": "fp16" | "bf16" | "fp32" | null, "strongly_typed": bool, "refittable": bool,
"timing_cache": path | null, "verbose": bool}``. Exit 0 on success; on failure one line
``error: ...`` on stderr and exit 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def configure_polygraphy(runtime: str) -> None:
    """Choose polygraphy's TensorRT module; must run before ``polygraphy.backend.trt`` is imported."""
    if "polygraphy.backend.trt" in sys.modules:
        raise RuntimeError("polygraphy.backend.trt was imported before the TensorRT flavour was chosen")
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if runtime == "tensorrt-rtx" else "0"
    from polygraphy import config

    config.USE_TENSORRT_RTX = runtime == "tensorrt-rtx"


def polygraphy_profiles(job: dict) -> list:
    """One polygraphy ``Profile`` per entry of ``job["profiles"]`` (several in one engine)."""
    from polygraphy.backend.trt import Profile

    profiles = []
    for shapes in job["profiles"]:
        profile = Profile()
        for name, (low, opt, high) in shapes.items():
            profile.add(name, low, opt, high)
        profiles.append(profile)
    return profiles


def create_config(job: dict):
    """``CreateConfigRTX`` (strongly typed, compute capabilities) or ``CreateConfig`` (precision flags, refit, timing cache)."""
    common = {"profiles": polygraphy_profiles(job), "builder_optimization_level": job["optimization_level"]}
    if job["runtime"] == "tensorrt-rtx":
        from polygraphy.backend.tensorrt_rtx import CreateConfigRTX

        targets = [tuple(c) for c in job["compute_capabilities"]] if job["compute_capabilities"] else None
        return CreateConfigRTX(compute_capabilities=targets, **common)
    from polygraphy.backend.trt import CreateConfig

    precision = job["precision"]
    flags = {} if job["strongly_typed"] else {"fp16": precision == "fp16", "bf16": precision == "bf16"}
    return CreateConfig(refittable=job["refittable"], load_timing_cache=job["timing_cache"], **common, **flags)


def build(job: dict) -> None:
    """Parse the ONNX, build, and write the serialized engine to ``job["output"]``."""
    from polygraphy.backend.common import SaveBytes
    from polygraphy.backend.trt import EngineBytesFromNetwork, NetworkFromOnnxPath
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.INFO if job.get("verbose") else G_LOGGER.ERROR
    # TensorRT-RTX networks are always strongly typed (precision comes from the ONNX).
    strongly_typed = True if job["runtime"] == "tensorrt-rtx" else (job["strongly_typed"] or None)
    network = NetworkFromOnnxPath(job["onnx"], strongly_typed=strongly_typed)
    engine = EngineBytesFromNetwork(network, config=create_config(job),
                                    save_timing_cache=job["timing_cache"] if job["runtime"] == "tensorrt" else None)
    SaveBytes(engine, job["output"])()


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    try:
        configure_polygraphy(job["runtime"])
        build(job)
    except Exception as exc:  # polygraphy raises PolygraphyException; TensorRT raises TypeError/RuntimeError
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != here]  # no shadowing by this package's modules
    sys.exit(main(sys.argv[1:]))

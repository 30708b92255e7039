"""``resadapter-rt inspect``: what an export or engine directory holds and which sizes it serves."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ResAdapterRTError
from ..export.exporter import read_manifest
from .profiles import FAMILY_PIXEL_RANGE, ResolutionProfile, parse_size


def _export_lines(manifest: dict) -> list[str]:
    lines = [f"export: {manifest['family']}, alpha {manifest['alpha_mode']}"
             f"{'' if manifest['alpha'] is None else ' ' + format(manifest['alpha'], 'g')}, opset {manifest['opset']}, "
             f"dtype {manifest['dtype']}, target {manifest['target']}, torch {manifest['torch_version']}",
             f"  model {manifest['sources']['model']}; adapter {manifest['sources']['resadapter']['source']}"]
    for name, component in manifest["components"].items():
        worst = max(r["relative_error"] for r in component["validation"])
        inputs = ", ".join(f"{i['name']}{i['shape']}" for i in component["inputs"])
        lines.append(f"  {name}: {component['dtype']}, inputs {inputs}; ORT vs PyTorch worst relative error {worst:.1e} "
                     f"over {len(component['validation'])} shapes")
    return lines


def describe_artifacts(directory: Path, size: str | None = None) -> str:
    """A readable summary; with ``size`` (WxH) also whether it is covered."""
    if not directory.is_dir():
        raise ResAdapterRTError(f"{directory}: no such directory")
    manifest_path = directory / "manifest.json"
    data = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    lines: list[str] = [f"{directory}"]
    profiles: list[ResolutionProfile] | None = None
    if data.get("format") == "resadapter-rt/engines":
        env = data["environment"]
        lines.append(f"engines: precision {data['precision']}, TensorRT {env['tensorrt_version']}, CUDA {env['cuda_version']}, "
                     f"GPU {env['gpu_name']} (compute capability {env['compute_capability']})")
        for name, component in data["components"].items():
            lines.append(f"  {name}: {component['engine']} sha256 {component['sha256'][:12]}")
        profiles = [ResolutionProfile(**{k: tuple(v) if isinstance(v, list) else v for k, v in p.items() if k != "spec"})
                    for p in data["profiles"]]
        export = read_manifest(directory / "onnx")
    elif (directory / "onnx").is_dir():
        export = read_manifest(directory / "onnx")
        request = directory / "build_request.json"
        lines.append("engines: none built yet (TensorRT missing or the build did not finish)")
        if request.is_file():
            lines.append("  requested profiles: " + "; ".join(p["spec"] for p in json.loads(request.read_text())["profiles"]))
            profiles = [ResolutionProfile.parse(p["spec"]) for p in json.loads(request.read_text())["profiles"]]
    else:
        export = read_manifest(directory)
    lines += _export_lines(export)
    if profiles and data.get("format") == "resadapter-rt/engines":
        lines.append("profiles: " + "; ".join(p.describe() for p in profiles))
    if size:
        width, height = parse_size(size, size)
        if profiles is not None:
            covered = any(p.covers(width, height) for p in profiles)
            lines.append(f"{width}x{height}: {'covered' if covered else 'NOT covered'} by the engine profiles")
        low, high = FAMILY_PIXEL_RANGE[export["family"]]
        covered = width % 8 == 0 and height % 8 == 0 and low <= width <= high and low <= height <= high
        lines.append(f"{width}x{height}: {'covered' if covered else 'NOT covered'} by the ONNX export "
                     f"({low}-{high} px per side, multiples of 8)")
    return "\n".join(lines)

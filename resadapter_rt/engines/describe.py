"""``resadapter-rt inspect``: what an export or engine directory holds and which sizes it serves.

A directory that is not what its manifest says (a malformed manifest, a missing graph, weights or
engine file) is a one-line error, never a healthy-looking description. With a size, the answer is
also returned as a flag (``inspect`` exits 1 when the size is not covered): by the engine profiles
where engines were built, else by the export's pixel range (the model's declared one, else its family's).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ResAdapterRTError
from .manifest import ENGINE_FORMAT, check_engine_files, manifest_format, read_engine_manifest, rebuild_command
from .prepare import checked_export_manifest
from .profiles import FAMILY_PIXEL_RANGE, ResolutionProfile, parse_size

def _export_lines(manifest: dict) -> list[str]:
    alpha = "" if manifest.get("alpha") is None else " " + format(manifest["alpha"], "g")
    adapter = manifest["sources"].get("resadapter", {})
    lines = [f"export: {manifest['family']}, alpha {manifest['alpha_mode']}{alpha}, opset {manifest['opset']}, "
             f"dtype {manifest['dtype']}, target {manifest['target']}, torch {manifest['torch_version']}",
             f"  model {manifest['sources'].get('model')}; adapter {adapter.get('source') if isinstance(adapter, dict) else adapter}"]
    if manifest.get("controlnets"):  # folded into the UNet graph; fed controlnet_cond and controlnet_scale
        lines.append(f"  {len(manifest['controlnets'])} ControlNet(s) in the UNet: " + ", ".join(c["source"] for c in manifest["controlnets"]))
    ip = manifest.get("ip_adapter")
    if ip:  # in the UNet graph; fed image_embeds (and ip_adapter_scale when dynamic)
        scale = "a runtime scale" if ip.get("scale_mode") == "dynamic" else f"scale baked at {ip.get('scale')}"
        lines.append(f"  IP-Adapter in the UNet ({ip.get('variant')}, {ip.get('num_tokens')} tokens, {scale}): {ip.get('source')}; "
                     f"image encoder {ip.get('image_encoder', {}).get('source')}")
    for name, component in manifest["components"].items():
        errors = [r.get("relative_error", float("nan")) for r in component["validation"]]
        worst = f"{max(errors):.1e}" if errors else "n/a"
        inputs = ", ".join(f"{i['name']}{i['shape']}" for i in component["inputs"])
        lines.append(f"  {name}: {component['dtype']}, inputs {inputs}; ORT vs PyTorch worst relative error {worst} "
                     f"over {len(errors)} shapes")
    return lines


def _engine_lines(manifest: dict) -> list[str]:
    runtime = manifest["runtime"]
    where = f", built on {manifest['gpu_name']} (CUDA {manifest['cuda_version']})" if manifest.get("gpu_name") else " (ahead of time, no GPU)"
    lines = [f"engines: {runtime.get('family')} {runtime.get('version')}, compute capability "
             f"{', '.join(manifest['compute_capabilities'])}{where}, built {manifest['built_at']}"
             f"{', in %.1f s' % manifest['build_seconds'] if isinstance(manifest.get('build_seconds'), (int, float)) else ''}"]
    for name, component in manifest["components"].items():
        lines.append(f"  {name}: {component['engine']}, {component['precision']}, {component['size_bytes'] / 2**20:.1f} MiB, "
                     f"sha256 {component['sha256'][:12]}")
    return lines


def _profiles(manifest: dict, path: Path) -> list[ResolutionProfile]:
    try:
        return [ResolutionProfile.parse(p["spec"]) for p in manifest["profiles"]]
    except (KeyError, TypeError):
        raise ResAdapterRTError(f"{path}: a profile lacks its 'spec'; rebuild the engines") from None


def describe_artifacts(directory: Path, size: str | None = None, tile: int | None = None,
                       stride: int | None = None) -> tuple[str, bool | None]:
    """A readable summary, and with ``size`` (WxH) whether ``generate`` serves it there (None without a size);
    with ``tile`` (and ``stride``) whether it serves it in MultiDiffusion tiles (``runtime/tiling.py``)."""
    if tile is not None and not size:
        raise ResAdapterRTError("--tile-size needs --size WxH (the canvas to tile)")
    if not directory.is_dir():
        raise ResAdapterRTError(f"{directory}: no such directory")
    dimensions = parse_size(size, size) if size else None
    lines: list[str] = [f"{directory}"]
    profiles: list[ResolutionProfile] | None = None
    if manifest_format(directory / "manifest.json") == ENGINE_FORMAT:
        engines = read_engine_manifest(directory)
        check_engine_files(directory, engines, rebuild_command(directory, engines), hash_files=False)
        lines += _engine_lines(engines)
        profiles = _profiles(engines, directory / "manifest.json")
        export = checked_export_manifest(directory / "onnx")
    elif (directory / "onnx").is_dir():
        export = checked_export_manifest(directory / "onnx")
        lines.append("engines: none built yet (the build did not run or did not finish)")
    else:
        export = checked_export_manifest(directory)
    lines += _export_lines(export)
    if profiles:
        lines.append("profiles: " + "; ".join(p.describe() for p in profiles))
    if not dimensions:
        return "\n".join(lines), None
    width, height = dimensions
    by_engines = any(p.covers(width, height) for p in profiles) if profiles is not None else None
    if by_engines is not None:
        lines.append(f"{width}x{height}: {'covered' if by_engines else 'NOT covered'} by the engine profiles")
    low, high = export.get("pixel_range") or FAMILY_PIXEL_RANGE[export["family"]]
    by_export = width % 8 == 0 and height % 8 == 0 and low <= width <= high and low <= height <= high
    lines.append(f"{width}x{height}: {'covered' if by_export else 'NOT covered'} by the ONNX export "
                 f"({low}-{high} px per side, multiples of 8)")
    if tile is not None:
        from .tile_windows import tiled_coverage

        def covers(w: int, h: int) -> bool:
            return any(p.covers(w, h) for p in profiles) if profiles is not None else low <= min(w, h) and max(w, h) <= high

        line, tiled = tiled_coverage(width, height, tile, stride, covers)
        lines.append(line + (" by the engine profiles" if profiles is not None else " by the ONNX export"))
        return "\n".join(lines), tiled
    return "\n".join(lines), by_export if by_engines is None else by_engines

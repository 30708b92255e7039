"""CPU backends side by side on one export: torch, onnxruntime, openvino fp32 and openvino bf16.

UNet step latency and end-to-end generation time, interleaved in one process (ratios are what to
read), with each backend's achieved FLOP/s as a share of this machine's matmul peak at its compute
precision (fp32 and bf16 peaks measured the same way: an OpenVINO MatMul of a large square).
OpenVINO's compile time is measured cold (empty cache) and cached. On a CPU without native bf16
(``generate``'s own check) openvino-bf16 and the bf16 peaks are recorded as "not measurable here".
"""

from __future__ import annotations

import gc
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .results import not_measurable
from .suite import interleaved, machine_record, matmul_peak_gflops, timed, unet_gflop

BACKENDS = ("torch", "onnxruntime", "openvino-fp32", "openvino-bf16")
PEAK_PRECISION = {"torch": "fp32", "onnxruntime": "fp32", "openvino-fp32": "fp32", "openvino-bf16": "bf16"}


def openvino_matmul_peak_gflops(precision: str, size: int = 2048, repeats: int = 5) -> float:
    """Matmul throughput of OpenVINO's CPU plugin at ``precision`` (fp32 | bf16): a size x size MatMul model."""
    import openvino as ov
    from openvino import opset13 as ops

    a = ops.parameter([size, size], ov.Type.f32, name="a")
    b = ops.constant(np.random.default_rng(0).standard_normal((size, size), dtype=np.float32))
    model = ov.Model([ops.matmul(a, b, False, False)], [a], "matmul")
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                                       "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    request.infer({0: x})
    best = min(timed(lambda: request.infer({0: x})) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def load_pipelines(export_dir: Path, backends=BACKENDS, progress=print) -> tuple[dict, dict]:
    """One ``ResAdapterPipeline`` per backend, and OpenVINO's cold and cached compile seconds per component."""
    from ..runtime.pipeline import ResAdapterPipeline

    pipelines, compile_record = {}, {}
    previous = os.environ.get("RESADAPTER_RT_CACHE")
    try:
        for name in backends:
            if name.startswith("openvino"):
                # an empty compiled-model cache per precision: OpenVINO's CPU blob does not depend on the precision
                # hint (it is applied at load), so a bf16 start after an fp32 one would load the fp32 compile's blob
                with tempfile.TemporaryDirectory() as cache:
                    os.environ["RESADAPTER_RT_CACHE"] = cache
                    precision = name.split("-")[1]
                    first = ResAdapterPipeline.from_artifacts(export_dir, backend="openvino", cpu_precision=precision)
                    cold = {c: round(r.compile_seconds, 2) for c, r in first.runners.items()}
                    cold_from_cache = any(r.loaded_from_cache for r in first.runners.values())  # False: a real first compile
                    del first
                    gc.collect()
                    pipe = ResAdapterPipeline.from_artifacts(export_dir, backend="openvino", cpu_precision=precision)
                compile_record[name] = {"precision": pipe.precisions, "cold_compile_seconds": cold, "cold_from_cache": cold_from_cache,
                                        "cached_compile_seconds": {c: round(r.compile_seconds, 2) for c, r in pipe.runners.items()},
                                        "cached": all(r.loaded_from_cache for r in pipe.runners.values())}
                progress(f"[cpu-backends] {name}: compile {cold} s cold, {compile_record[name]['cached_compile_seconds']} s from cache")
            else:
                pipe = ResAdapterPipeline.from_artifacts(export_dir, backend=name, **({"fused_group_norm": False} if name == "torch" else {}))
            pipelines[name] = pipe
    finally:
        if previous is None:
            os.environ.pop("RESADAPTER_RT_CACHE", None)
        else:
            os.environ["RESADAPTER_RT_CACHE"] = previous
    return pipelines, compile_record


class _UNetOnly:
    """Stands in for a pipeline where only the UNet is loaded (``--unet-only``: a third of the memory)."""

    def __init__(self, directory: Path, manifest: dict, unet) -> None:
        self.directory, self.manifest, self.runners = directory, manifest, {"unet": unet}


def load_unets(export_dir: Path, backends=BACKENDS, progress=print) -> tuple[dict, dict]:
    """Only each backend's UNet (torch excluded: it rebuilds the whole pipeline), and OpenVINO's compile seconds."""
    from ..export.exporter import read_manifest
    from ..runtime.openvino_runners import OpenVINORunner
    from ..runtime.runners import OnnxRuntimeRunner

    manifest = read_manifest(export_dir)
    spec = manifest["components"]["unet"]
    names = (tuple(i["name"] for i in spec["inputs"]), tuple(o["name"] for o in spec["outputs"]))
    unets, compile_record = {}, {}
    for name in backends:
        if name == "onnxruntime":
            unets[name] = _UNetOnly(export_dir, manifest, OnnxRuntimeRunner(export_dir / spec["path"], providers=["CPUExecutionProvider"]))
        elif name.startswith("openvino"):
            precision = name.split("-")[1]
            with tempfile.TemporaryDirectory() as cache:
                cold = OpenVINORunner(export_dir / spec["path"], precision, Path(cache), names=names)
                cold_seconds = cold.compile_seconds
                del cold
                gc.collect()
                runner = OpenVINORunner(export_dir / spec["path"], precision, Path(cache), names=names)
            compile_record[name] = {"precision": {"unet": precision}, "cold_compile_seconds": {"unet": round(cold_seconds, 2)},
                                    "cached_compile_seconds": {"unet": round(runner.compile_seconds, 2)}, "cached": runner.loaded_from_cache}
            progress(f"[cpu-backends] {name}: UNet compile {cold_seconds:.1f} s cold, {runner.compile_seconds:.1f} s from cache")
            unets[name] = _UNetOnly(export_dir, manifest, runner)
        else:
            raise ValueError(f"--unet-only does not load the {name} backend")
    return unets, compile_record


def meta_unet_gflop(manifest: dict, export_dir: Path, inputs: dict) -> float:
    """FLOPs of one UNet call counted on the meta device (no weights in memory) from the recorded model's UNet config;
    the dynamic-alpha LoRA branches are not in it (rank-small next to the convs they sit beside)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from ..models.provenance import recorded_sources

    model = recorded_sources(manifest["sources"], export_dir).model
    if Path(model).is_dir():
        config = UNet2DConditionModel.load_config(Path(model) / "unet" if (Path(model) / "unet").is_dir() else model)
    else:  # a built-in tiny model: small enough to load
        from ..models.components import load_components

        config = load_components(model, unet_only=True).unet.config
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        unet(*(inputs[n].to("meta") for n in ("sample", "timestep", "encoder_hidden_states")))
    return counter.get_total_flops() / 1e9


def unet_step_row(pipelines: dict, width: int, height: int, batch: int, repeats: int, peaks: dict) -> dict:
    """UNet step latency per backend at one size, interleaved; speed vs onnxruntime; share of the matmul peak."""
    manifest = next(iter(pipelines.values())).manifest
    specs = {spec["name"]: spec for spec in manifest["components"]["unet"]["inputs"]}
    if manifest["family"] != "sd15":
        raise ValueError("the CPU backend comparison builds SD1.5 UNet inputs; pass an SD1.5 export")
    g = torch.Generator().manual_seed(0)
    inputs = {"sample": torch.randn(batch, 4, height // 8, width // 8, generator=g), "timestep": torch.full((batch,), 500.0),
              "encoder_hidden_states": torch.randn(batch, 77, specs["encoder_hidden_states"]["shape"][2], generator=g)}
    if "resadapter_alpha" in specs:
        inputs["resadapter_alpha"] = torch.tensor(0.8)
    runners = {name: pipe.runners["unet"] for name, pipe in pipelines.items()}
    gflop = unet_gflop(runners["torch"], inputs) if "torch" in runners else \
        meta_unet_gflop(manifest, Path(getattr(next(iter(pipelines.values())), "directory", ".")), inputs)
    timing = interleaved({name: (lambda r=r: r(**inputs)) for name, r in runners.items()}, repeats)
    row = {"width": width, "height": height, "batch": batch, "gflop": round(gflop, 1)}
    for name, stats in timing.items():
        row[name] = {k: round(v, 1) if k != "runs" else v for k, v in stats.items()}
        if "onnxruntime" in timing:
            row[name]["speed_vs_onnxruntime"] = round(timing["onnxruntime"]["median_ms"] / stats["median_ms"], 3)
        achieved = gflop / (stats["median_ms"] / 1e3)
        row[name]["gflops"] = round(achieved, 1)
        row[name]["percent_of_peak"] = round(100 * achieved / peaks[PEAK_PRECISION[name]], 1)
    return row


def end_to_end_row(pipelines: dict, width: int, height: int, steps: int, repeats: int) -> dict:
    """Prompt -> image per backend (CFG, batch 2 in the UNet), interleaved after a one-step warm-up at this size."""
    def generate(pipe, n):
        return pipe("a photo of a cat", width=width, height=height, num_inference_steps=n, seed=0, resadapter_alpha=0.8
                    if pipe.manifest["alpha_mode"] == "dynamic" else None)

    for pipe in pipelines.values():
        generate(pipe, 1)
    timing = interleaved({name: (lambda p=pipe: generate(p, steps)) for name, pipe in pipelines.items()}, repeats, warmup=0)
    row = {"width": width, "height": height, "steps": steps}
    for name, stats in timing.items():
        row[name] = {k: round(v, 1) if k != "runs" else v for k, v in stats.items()}
        if "onnxruntime" in timing:
            row[name]["speed_vs_onnxruntime"] = round(timing["onnxruntime"]["median_ms"] / stats["median_ms"], 3)
    return row


def measurable_backends(backends, bf16_reason: str | None) -> tuple[tuple, dict]:
    """The backends this CPU can run, and ``{backend: "not measurable here: <reason>"}`` for the others."""
    skipped = {name: not_measurable(bf16_reason) for name in backends if PEAK_PRECISION.get(name) == "bf16" and bf16_reason}
    return tuple(name for name in backends if name not in skipped), skipped


def run_cpu_backends(export_dir: Path, sizes, batch: int = 2, repeats: int = 2, e2e_steps: int = 4, e2e_repeats: int = 1,
                     backends=BACKENDS, unet_only: bool = False, progress=print) -> dict:
    """The whole comparison (``unet_only``: UNet steps only, no end to end); returns the record (the caller writes it)."""
    import openvino

    from ..runtime.openvino_runners import bf16_unavailable

    bf16_reason = bf16_unavailable()
    backends, skipped = measurable_backends(backends, bf16_reason)
    for name, line in skipped.items():
        progress(f"[cpu-backends] {name}: {line}")
    peaks = {"fp32": round(openvino_matmul_peak_gflops("fp32"), 1),
             "bf16": not_measurable(bf16_reason) if bf16_reason else round(openvino_matmul_peak_gflops("bf16"), 1)}
    reference = {"torch_fp32": round(matmul_peak_gflops(dtype=torch.float32), 1),
                 "torch_bf16": not_measurable(bf16_reason) if bf16_reason else round(matmul_peak_gflops(dtype=torch.bfloat16), 1)}
    progress(f"[cpu-backends] matmul peak (OpenVINO, 2048²): fp32 {peaks['fp32']}, bf16 {peaks['bf16']} GFLOP/s; "
             f"torch fp32 {reference['torch_fp32']}")
    pipelines, compile_record = (load_unets if unet_only else load_pipelines)(export_dir, backends, progress)
    record = {"benchmark": "cpu_backends", "export": str(export_dir), "matmul_peak_gflops": peaks,
              "matmul_peak_reference_gflops": reference, "openvino": openvino.__version__, "compile": compile_record,
              "not_measured": skipped, "unet_step": [], "end_to_end": []}
    for width, height in sizes:
        row = unet_step_row(pipelines, width, height, batch, repeats, peaks)
        record["unet_step"].append(row)
        progress(f"[cpu-backends] UNet {width}x{height} b{batch}: " + ", ".join(
            f"{n} {row[n]['median_ms']:.0f} ms ({row[n].get('speed_vs_onnxruntime', 0):.2f}x ORT, "
            f"{row[n]['percent_of_peak']:.0f}% peak)" for n in pipelines))
    for width, height in [] if unet_only else sizes:
        row = end_to_end_row(pipelines, width, height, e2e_steps, e2e_repeats)
        record["end_to_end"].append(row)
        progress(f"[cpu-backends] end to end {width}x{height}, {e2e_steps} steps: " + ", ".join(
            f"{n} {row[n]['median_ms'] / 1e3:.1f} s ({row[n].get('speed_vs_onnxruntime', 0):.2f}x ORT)" for n in pipelines))
    record |= machine_record()
    try:
        record["load_average"] = os.getloadavg()
    except OSError:
        pass
    return record


def markdown(record: dict) -> str:
    """The record as two tables: UNet step and end to end, each backend as ms and speed vs onnxruntime."""
    names = [n for n in BACKENDS if record["unet_step"] and n in record["unet_step"][0]]
    lines = ["| UNet step | GFLOP | " + " | ".join(names) + " |", "| --- | --- | " + " | ".join("---" for _ in names) + " |"]
    for r in record["unet_step"]:
        cells = [f"{r[n]['median_ms']:.0f} ms, {r[n].get('speed_vs_onnxruntime', 0):.2f}x, {r[n].get('percent_of_peak', 0):.0f}%"
                 for n in names]
        lines.append(f"| {r['width']}x{r['height']} b{r['batch']} | {r['gflop']} | " + " | ".join(cells) + " |")
    if record["end_to_end"]:
        lines += ["", "| end to end | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |"]
    for r in record["end_to_end"]:
        cells = [f"{r[n]['median_ms'] / 1e3:.1f} s, {r[n].get('speed_vs_onnxruntime', 0):.2f}x" for n in names]
        lines.append(f"| {r['width']}x{r['height']}, {r['steps']} steps | " + " | ".join(cells) + " |")
    lines += [f"\n{name}: {line}" for name, line in record.get("not_measured", {}).items()]
    return "\n".join(lines)

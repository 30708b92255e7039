"""Side-by-side speed measurements (``resadapter-rt bench``): UNet step per backend, end to end vs
diffusers, latency scaling with pixel count, FLOP/s against the machine's matmul peak.

Every comparison runs interleaved in one process after a warm-up; medians and p90 are reported and
ratios are what to read (absolute times depend on the machine).
"""

from __future__ import annotations

import platform
import resource
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .results import not_measurable, write_json, write_text

SIZES = ((256, 256), (512, 512), (768, 768), (1024, 1024), (640, 384), (1000, 600))


def summarize(times: list[float]) -> dict:
    return {"median_ms": 1e3 * statistics.median(times), "p90_ms": 1e3 * float(np.percentile(times, 90)), "runs": len(times)}


def interleaved(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Time several functions round-robin so that machine drift hits all of them alike."""
    for fn in functions.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: summarize(values) for name, values in times.items()}


def matmul_peak_gflops(size: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """This machine's matmul throughput at ``dtype`` (torch, all threads): the FLOP/s yardstick."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def unet_gflop(runner, inputs: dict) -> float:
    """FLOPs of one UNet call (a torch runner), counted by torch's FlopCounterMode (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        runner(**inputs)
    return counter.get_total_flops() / 1e9


def fitted_exponent(pixels: list[float], latencies: list[float]) -> float:
    """Slope of log(latency) against log(pixels): 1.0 is linear in pixels; attention pushes it above."""
    slope, _ = np.polyfit(np.log(pixels), np.log(latencies), 1)
    return float(slope)


def machine_record() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = None
    import diffusers
    import onnxruntime

    return {"machine": platform.machine(), "processor": platform.processor(), "threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "diffusers": diffusers.__version__, "commit": commit,
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def openvino_unets(export_dir: Path, manifest: dict) -> dict:
    """The export's UNet compiled by OpenVINO at fp32 and, where ``generate`` would allow bf16, bf16 (none without openvino)."""
    import importlib.util

    if importlib.util.find_spec("openvino") is None:
        return {}
    from ..runtime.openvino_runners import OpenVINORunner, bf16_unavailable, openvino_cache_dir

    spec = manifest["components"]["unet"]
    names = (tuple(i["name"] for i in spec["inputs"]), tuple(o["name"] for o in spec["outputs"]))
    reason = bf16_unavailable()
    if reason:
        print(f"[bench] openvino_bf16: {not_measurable(reason)}", flush=True)
    precisions = ("fp32",) if reason else ("fp32", "bf16")
    return {f"openvino_{p}": OpenVINORunner(export_dir / spec["path"], p, openvino_cache_dir(spec["sha256"]), names=names)
            for p in precisions}


def row_backends(row: dict) -> list[str]:
    """The backends a UNet-step row has timings for, in table order."""
    return [b for b in ("torch", "onnxruntime", "openvino_fp32", "openvino_bf16") if f"{b}_median_ms" in row]


def unet_step_rows(export_dir: Path, sizes, batches, repeats: int, label: str) -> list[dict]:
    """UNet step latency, torch eager vs onnxruntime CPU (and OpenVINO fp32/bf16 when installed), on the same merged weights."""
    from ..export.unet import unet_spec
    from ..runtime.runners import OnnxRuntimeRunner, torch_runners
    from ..export.exporter import read_manifest

    manifest = read_manifest(export_dir)
    torch_unet = torch_runners(manifest, export_dir, fused_group_norm=False)[0]["unet"]
    ort_unet = OnnxRuntimeRunner(export_dir / "unet" / "model.onnx", providers=["CPUExecutionProvider"])
    others = openvino_unets(export_dir, manifest)
    unet = torch_unet.module.unet
    sdxl = manifest["family"] == "sdxl"
    rows = []
    for width, height in sizes:
        for batch in batches:
            spec = unet_spec(unet, sdxl, dynamic_alpha=manifest["alpha_mode"] == "dynamic")
            inputs = spec.example(batch, height // 8, width // 8)
            gflop = unet_gflop(torch_unet, inputs)
            timing = interleaved({"torch": lambda: torch_unet(**inputs), "onnxruntime": lambda: ort_unet(**inputs),
                                  **{name: (lambda r=r: r(**inputs)) for name, r in others.items()}}, repeats)
            row = {"model": label, "width": width, "height": height, "batch": batch, "gflop": round(gflop, 1),
                   **{f"{backend}_{k}": round(v, 2) for backend, stats in timing.items() for k, v in stats.items() if k != "runs"},
                   "ort_speedup_vs_torch": timing["torch"]["median_ms"] / timing["onnxruntime"]["median_ms"],
                   **{f"{name}_speedup_vs_ort": timing["onnxruntime"]["median_ms"] / timing[name]["median_ms"] for name in others}}
            rows.append(row)
            print(f"[bench] {label} {width}x{height} b{batch}: " + ", ".join(f"{b} {row[f'{b}_median_ms']:.1f} ms" for b in row_backends(row))
                  + f", ORT speed-up {row['ort_speedup_vs_torch']:.2f}x", flush=True)
    return rows


def end_to_end_rows(export_dir: Path, size: tuple[int, int], steps: int, repeats: int) -> dict:
    """The runtime (onnxruntime) vs diffusers' own pipeline with the same merged weights and scheduler."""
    from ..models.adapter import load_adapter
    from ..export.exporter import read_manifest
    from ..models.merge import merge_pipeline
    from ..models.components import load_components
    from ..runtime.pipeline import ResAdapterPipeline
    from ..runtime.schedulers import DEFAULT_SCHEDULER, make_scheduler

    manifest = read_manifest(export_dir)
    ours = ResAdapterPipeline.from_artifacts(export_dir)
    parts = load_components(manifest["sources"]["model"])
    alpha = manifest["alpha"] if manifest["alpha"] is not None else 1.0
    merged = merge_pipeline(parts, load_adapter(manifest["sources"]["resadapter"]["source"]), alpha)
    reference = merged.to_diffusers(make_scheduler(DEFAULT_SCHEDULER, dict(parts.scheduler.config)))
    reference.set_progress_bar_config(disable=True)
    width, height = size
    timing = interleaved({
        "resadapter_rt": lambda: ours("a cat", width=width, height=height, num_inference_steps=steps, resadapter_alpha=alpha if manifest["alpha_mode"] == "dynamic" else None),
        "diffusers": lambda: reference("a cat", width=width, height=height, num_inference_steps=steps,
                                       generator=torch.Generator().manual_seed(0)),
    }, repeats)
    speedup = timing["diffusers"]["median_ms"] / timing["resadapter_rt"]["median_ms"]
    print(f"[bench] end to end {width}x{height}, {steps} steps: resadapter-rt {timing['resadapter_rt']['median_ms']:.0f} ms, "
          f"diffusers {timing['diffusers']['median_ms']:.0f} ms, speed-up {speedup:.2f}x", flush=True)
    return {"width": width, "height": height, "steps": steps, **{f"{k}_{m}": round(v, 1) for k, s in timing.items() for m, v in s.items() if m != "runs"},
            "speedup_vs_diffusers": speedup}


def exponents(rows: list[dict]) -> dict:
    """Fitted latency-vs-pixels exponent per backend and model (batch 2 rows)."""
    out = {}
    for model in sorted({r["model"] for r in rows}):
        chosen = [r for r in rows if r["model"] == model and r["batch"] == 2]
        if len(chosen) < 3:
            continue
        pixels = [r["width"] * r["height"] for r in chosen]
        for backend in ("torch", "onnxruntime"):
            out[f"{model}/{backend}"] = round(fitted_exponent(pixels, [r[f"{backend}_median_ms"] for r in chosen]), 3)
    return out


def flops_rows(rows: list[dict], peak: float) -> None:
    """Achieved GFLOP/s per backend and its share of the fp32 matmul peak (bf16 against the same fp32 yardstick)."""
    for row in rows:
        for backend in row_backends(row):
            achieved = row["gflop"] / (row[f"{backend}_median_ms"] / 1e3)
            row[f"{backend}_gflops"] = round(achieved, 1)
            row[f"{backend}_fraction_of_peak"] = round(achieved / peak, 3)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model in sorted({r["model"] for r in rows}):
        for backend, style in (("torch", "o--"), ("onnxruntime", "s-")):
            chosen = sorted((r for r in rows if r["model"] == model and r["batch"] == 2), key=lambda r: r["width"] * r["height"])
            if chosen:
                ax.plot([r["width"] * r["height"] / 1e6 for r in chosen], [r[f"{backend}_median_ms"] for r in chosen], style,
                        label=f"{model} {backend}")
    ax.set_xlabel("megapixels (batch 2, CFG)")
    ax.set_ylabel("UNet step, median ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("UNet step latency vs resolution (CPU)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown_table(record: dict) -> str:
    openvino = [b for b in ("openvino_fp32", "openvino_bf16") if any(f"{b}_median_ms" in r for r in record["unet_step"])]
    lines = ["| model | size | batch | GFLOP | torch ms | onnxruntime ms | ORT speed-up | ORT % of matmul peak |"
             + "".join(f" {b} ms (vs ORT) |" for b in openvino),
             "| --- | --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(openvino)]
    for r in record["unet_step"]:
        lines.append(f"| {r['model']} | {r['width']}x{r['height']} | {r['batch']} | {r['gflop']} | {r['torch_median_ms']:.1f} | "
                     f"{r['onnxruntime_median_ms']:.1f} | {r['ort_speedup_vs_torch']:.2f}x | {100 * r['onnxruntime_fraction_of_peak']:.0f}% |"
                     + "".join(f" {r[f'{b}_median_ms']:.1f} ({r[f'{b}_speedup_vs_ort']:.2f}x) |" if f"{b}_median_ms" in r else " - |"
                               for b in openvino))
    e2e = record.get("end_to_end")
    if e2e:
        lines += ["", f"End to end ({e2e['width']}x{e2e['height']}, {e2e['steps']} steps, tiny SD1.5): resadapter-rt "
                      f"{e2e['resadapter_rt_median_ms']:.0f} ms vs diffusers {e2e['diffusers_median_ms']:.0f} ms "
                      f"= {e2e['speedup_vs_diffusers']:.2f}x."]
    lines += ["", f"fp32 matmul peak (2048², torch): {record['matmul_peak_gflops']:.0f} GFLOP/s. "
                  f"Latency ∝ pixels^k, fitted k: " + ", ".join(f"{k} {v}" for k, v in record["exponents"].items()) + "."]
    return "\n".join(lines)



def run_cpu_suite(results_dir: Path, full_size: bool = True, repeats: int = 3, progress=print) -> dict:
    """The whole CPU benchmark: JSON, PNG plot and a Markdown table under ``results_dir``."""
    import tempfile

    from ..export.exporter import ExportOptions, export_pipeline

    results_dir.mkdir(parents=True, exist_ok=True)
    record: dict = {"benchmark": "cpu_suite", "matmul_peak_gflops": round(matmul_peak_gflops(), 1)}
    progress(f"[bench] fp32 matmul peak: {record['matmul_peak_gflops']} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        tiny = Path(tmp) / "tiny"
        export_pipeline(ExportOptions(model="tiny-sd15", resadapter="tiny-sd15", alpha=1.0, validation_sizes=((328, 200, 1),)),
                        tiny, progress=lambda m: None)
        rows = unet_step_rows(tiny, SIZES, (1, 2), repeats, "tiny-sd15")
        record["end_to_end"] = end_to_end_rows(tiny, (512, 512), 10, repeats)
        if full_size:
            from diffusers import UNet2DConditionModel

            from ..models.families import SD15
            from ..models.tiny import full_size_unet_config

            torch.manual_seed(0)
            unet_dir = Path(tmp) / "sd15-unet"
            UNet2DConditionModel(**full_size_unet_config(SD15)).save_pretrained(unet_dir)
            adapter = Path(__file__).resolve().parents[2] / "shared" / "resadapter" / "resadapter_v2_sd1.5"
            full = Path(tmp) / "full"
            started = time.perf_counter()
            export_pipeline(ExportOptions(model=str(unet_dir), resadapter=str(adapter) if adapter.is_dir() else "tiny-sd15",
                                          alpha=1.0, validation_sizes=((328, 200, 1),)), full, progress=progress)
            record["full_size_export_seconds"] = round(time.perf_counter() - started, 1)
            rows += unet_step_rows(full, ((256, 256), (512, 512)), (2,), max(2, repeats - 1), "sd15-full-size")
    flops_rows(rows, record["matmul_peak_gflops"])
    record["unet_step"] = rows
    record["exponents"] = exponents(rows)
    record |= machine_record()
    from ..runtime.openvino_runners import bf16_unavailable

    reason = bf16_unavailable()  # also when openvino is not installed (then there are no OpenVINO columns at all)
    if reason:
        record["not_measured"] = {"openvino_bf16": not_measurable(reason)}
    write_json(results_dir / "cpu_bench.json", record)
    plot(rows, results_dir / "cpu_bench.png")
    write_text(results_dir / "cpu_bench.md", markdown_table(record) + "\n")
    progress(f"[bench] wrote {results_dir / 'cpu_bench.json'}, cpu_bench.png and cpu_bench.md")
    return record

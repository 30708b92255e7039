"""GroupNorm(+SiLU) on a CUDA GPU: old single-launch kernel vs new (planned) kernel vs PyTorch.

Measures the shapes of the roofline model (every GroupNorm of the SD1.5/SDXL UNets at batch 2 and
the VAE decoder at batch 1, at 512², 1024² and 1536²; read from
benchmarks/results/group_norm_roofline.json, so no diffusers is needed on the GPU machine), NCHW
and channels-last: ``old`` forces the single launch (one program per (sample, group)), ``new`` is
``group_norm`` with its launch plan, ``torch`` is ``F.group_norm`` then ``F.silu`` where the model
has SiLU. Interleaved timing with CUDA events, median and p90.

Bandwidth, per GPU: a device-to-device copy is measured first (bytes read + written over time: this
card's ceiling); each row gives every variant's achieved bandwidth over the fewest bytes (the input
read once, the output written once) and the launch plan's modelled time at this GPU's datasheet
bandwidth (H100 SXM 3.35 TB/s, H200 4.8 TB/s, ...) and at the measured copy bandwidth. Timings are
measurements, never pass/fail.

Numbers that are checked: each kernel's max |error| against float64 must be at most twice torch's own
error plus one unit in the last place of the dtype at the output's magnitude; a row that misses is
listed under ``numeric_failures`` and the exit status is 1.

Writes ``group_norm_gpu.json`` (strict JSON) after every row, so a run stopped early keeps what it measured:
into ``--out DIR``, else a new directory under benchmarks/results/tmp/; ``--update-results``: benchmarks/results/.
python benchmarks/group_norm_gpu.py [--out DIR | --update-results] [--pixels 512 1024 1536] [--dtype fp16|bf16|fp32]
    [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # runnable as `python benchmarks/group_norm_gpu.py` without PYTHONPATH
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from resadapter_rt.bench.cuda_timing import cuda_event_times_ms  # noqa: E402
from resadapter_rt.bench.results import add_output_arguments, output_dir, write_json  # noqa: E402
from resadapter_rt.kernels import group_norm  # noqa: E402
from resadapter_rt.kernels.group_norm_op import _triton_group_norm  # noqa: E402
from resadapter_rt.kernels.launch_plan import estimate_us, plan_group_norm, single_plan  # noqa: E402

ROOFLINE = REPO / "benchmarks/results/group_norm_roofline.json"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SIGNIFICAND_BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}
# Datasheet HBM bandwidth (bytes/s) by a piece of the name torch reports; the first match wins.
DATASHEET_BANDWIDTH = (("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12), ("H200", 4.8e12),
                       ("A100-SXM4-80GB", 2.04e12), ("A100", 1.555e12))


def datasheet_bandwidth(gpu: str) -> float | None:
    """The vendor's memory bandwidth for a GPU name, None for a card not in the table."""
    return next((bandwidth for piece, bandwidth in DATASHEET_BANDWIDTH if piece in gpu), None)


def copy_bandwidth(gib: float = 1.0, repeats: int = 10) -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second), median of ``repeats``."""
    source = torch.randn(int(gib * 2**30) // 4, device="cuda")
    target = torch.empty_like(source)
    cuda_event_times_ms(lambda: target.copy_(source), 3)
    median_ms = statistics.median(cuda_event_times_ms(lambda: target.copy_(source), repeats))
    return 2 * gib * 2**30 / (median_ms * 1e-3)


def roofline_shapes(pixels: list[int]) -> list[dict]:
    """Unique (shape, groups, SiLU) of the roofline rows at these sizes, with where they occur."""
    shapes: dict[tuple, dict] = {}
    for row in json.loads(ROOFLINE.read_text())["rows"]:
        if row["pixels"] in pixels and row["layout"] == "nchw":
            key = (tuple(row["shape"]), row["groups"], row["silu"])
            shapes.setdefault(key, {"shape": key[0], "groups": key[1], "silu": key[2], "in": []})
            shapes[key]["in"].append(f"{row['model']}@{row['pixels']}x{row['count']}")
    return sorted(shapes.values(), key=lambda s: (s["shape"][0] * s["shape"][1] * s["shape"][2] * s["shape"][3], s["shape"]))


def ulp_at(value: float, dtype: torch.dtype) -> float:
    """Spacing of ``dtype`` numbers at ``value``."""
    exponent = torch.frexp(torch.tensor(value, dtype=torch.float64))[1].item()
    return 2.0 ** (exponent - SIGNIFICAND_BITS[dtype])


def measure(case: dict, dtype: torch.dtype, channels_last: bool, repeats: int, sms: int, bandwidths: dict) -> dict:
    """Errors vs float64, interleaved timings of old / new / torch, bandwidths and model for one shape and layout."""
    shape, groups, silu = case["shape"], case["groups"], case["silu"]
    g = torch.Generator(device="cuda").manual_seed(sum(shape) + groups)
    x = (100 + torch.randn(shape, device="cuda", generator=g)).to(dtype)  # mean offset, as in the tests
    if channels_last and x.shape[-1] > 1:
        x = x.to(memory_format=torch.channels_last)
    weight = torch.randn(shape[1], device="cuda", generator=g).to(dtype)
    bias = torch.randn(shape[1], device="cuda", generator=g).to(dtype)
    activation = "silu" if silu else None
    fns = {
        "old": lambda: _triton_group_norm(x, groups, weight, bias, 1e-5, silu, "single"),
        "new": lambda: group_norm(x, groups, weight, bias, activation=activation),
        "torch": lambda: F.silu(F.group_norm(x, groups, weight, bias)) if silu else F.group_norm(x, groups, weight, bias),
    }
    reference = F.group_norm(x.double(), groups, weight.double(), bias.double())
    reference = F.silu(reference) if silu else reference
    errors = {name: float((fn().double() - reference).abs().max()) for name, fn in fns.items()}
    tolerance = 2 * errors["torch"] + ulp_at(float(reference.abs().max()), dtype)
    del reference
    for fn in fns.values():  # warm-up and JIT compile
        cuda_event_times_ms(fn, 3)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved
        for name, fn in fns.items():
            times[name] += cuda_event_times_ms(fn, 1)
    is_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    plan = plan_group_norm(tuple(shape), groups, x.element_size(), is_cl, sms)
    old_plan = single_plan(shape[0], shape[1], shape[2] * shape[3], groups, x.element_size())
    fewest_bytes = 2 * x.numel() * x.element_size()
    row = {"shape": list(shape), "groups": groups, "silu": silu, "in": case["in"],
           "layout": "channels_last" if is_cl else "nchw", "plan": plan.path,
           "programs": [launch.programs for launch in plan.launches], "max_abs_error_vs_float64": errors,
           "tolerance": tolerance, "within_tolerance": {name: errors[name] <= tolerance for name in ("old", "new")},
           "fewest_bytes": fewest_bytes, "plan_bytes": sum(launch.bytes_moved for launch in plan.launches),
           "modelled_us": {f"{plan_name}_at_{source}": round(estimate_us(p.launches, bandwidth=bandwidth, sms=sms), 2)
                           for plan_name, p in (("old", old_plan), ("new", plan))
                           for source, bandwidth in bandwidths.items() if bandwidth}}
    for name, t in times.items():
        row[f"{name}_median_ms"] = statistics.median(t)
        row[f"{name}_p90_ms"] = sorted(t)[int(0.9 * len(t))]
        row[f"{name}_achieved_gb_s"] = round(fewest_bytes / (row[f"{name}_median_ms"] * 1e-3) / 1e9, 1)
    row["new_fraction_of_copy_bandwidth"] = round(row["new_achieved_gb_s"] * 1e9 / bandwidths["measured_copy"], 3)
    row["new_vs_torch"] = row["torch_median_ms"] / row["new_median_ms"]
    row["new_vs_old"] = row["old_median_ms"] / row["new_median_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    parser.add_argument("--pixels", type=int, nargs="+", default=[512, 1024, 1536])
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if not torch.cuda.is_available():
        print("error: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    path = output_dir(args, "group_norm_gpu") / "group_norm_gpu.json"
    gpu = torch.cuda.get_device_name()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    bandwidths = {"datasheet": datasheet_bandwidth(gpu), "measured_copy": copy_bandwidth()}
    print(f"{gpu}: {sms} SMs, copy {bandwidths['measured_copy'] / 1e12:.2f} TB/s, datasheet "
          f"{bandwidths['datasheet'] / 1e12 if bandwidths['datasheet'] else float('nan'):.2f} TB/s", flush=True)
    record = {"benchmark": "group_norm_gpu", "gpu": gpu, "sms": sms, "dtype": args.dtype, "torch": torch.__version__,
              "machine": platform.machine(), "repeats": args.repeats, "bandwidth_bytes_per_s": bandwidths,
              "tolerance_rule": "max |error vs float64| <= 2 x torch's + 1 ulp of the dtype at max |output|",
              "rows": [], "numeric_failures": []}
    for case in roofline_shapes(args.pixels):
        for channels_last in (False, True):
            if channels_last and case["shape"][3] == 1:
                continue  # 3-D inputs (VAE attention) have no channels-last form
            row = measure(case, DTYPES[args.dtype], channels_last, args.repeats, sms, bandwidths)
            record["rows"].append(row)
            record["numeric_failures"] += [
                f"{'x'.join(map(str, row['shape']))} {row['layout']} {name}: error {row['max_abs_error_vs_float64'][name]:.3g} "
                f"> {row['tolerance']:.3g}" for name, ok in row["within_tolerance"].items() if not ok]
            write_json(path, record, indent=1)
            print(f"{'x'.join(map(str, row['shape']))} {row['layout']:13s} {'silu' if row['silu'] else 'plain'} "
                  f"{row['plan']:6s}: old {row['old_median_ms']:.4f} ms, new {row['new_median_ms']:.4f} ms "
                  f"({row['new_achieved_gb_s']:.0f} GB/s), torch {row['torch_median_ms']:.4f} ms, new vs torch "
                  f"{row['new_vs_torch']:.2f}x, error {row['max_abs_error_vs_float64']['new']:.2e} "
                  f"(limit {row['tolerance']:.2e})", flush=True)
    print(f"wrote {path}; {len(record['numeric_failures'])} numeric failures")
    for failure in record["numeric_failures"]:
        print(f"error: {failure}")
    return 1 if record["numeric_failures"] else 0


if __name__ == "__main__":
    sys.exit(main())

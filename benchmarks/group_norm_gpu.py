"""GroupNorm(+SiLU) on a CUDA GPU: old single-launch kernel vs new (planned) kernel vs PyTorch.

Measures the shapes of the roofline model (every GroupNorm of the SD1.5/SDXL UNets at batch 2 and
the VAE decoder at batch 1, at 512², 1024² and 1536²; read from
benchmarks/results/group_norm_roofline.json, so no diffusers is needed on the GPU machine), NCHW
and channels-last: ``old`` forces the single launch (one program per (sample, group)), ``new`` is
``group_norm`` with its launch plan, ``torch`` is ``F.group_norm`` then ``F.silu`` where the model
has SiLU. Interleaved timing with CUDA events, median and p90; next to each the plan and the
modelled time for this GPU's SM count. Writes benchmarks/results/group_norm_gpu.json.
python benchmarks/group_norm_gpu.py [--pixels 512 1024 1536] [--dtype fp16|bf16|fp32] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from resadapter_rt.bench.cuda_timing import cuda_event_times_ms
from resadapter_rt.kernels import group_norm
from resadapter_rt.kernels.group_norm_op import _triton_group_norm
from resadapter_rt.kernels.launch_plan import estimate_us, plan_group_norm, single_plan

REPO = Path(__file__).resolve().parents[1]
ROOFLINE = REPO / "benchmarks/results/group_norm_roofline.json"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def roofline_shapes(pixels: list[int]) -> list[dict]:
    """Unique (shape, groups, SiLU) of the roofline rows at these sizes, with where they occur."""
    shapes: dict[tuple, dict] = {}
    for row in json.loads(ROOFLINE.read_text())["rows"]:
        if row["pixels"] in pixels and row["layout"] == "nchw":
            key = (tuple(row["shape"]), row["groups"], row["silu"])
            shapes.setdefault(key, {"shape": key[0], "groups": key[1], "silu": key[2], "in": []})
            shapes[key]["in"].append(f"{row['model']}@{row['pixels']}x{row['count']}")
    return sorted(shapes.values(), key=lambda s: (s["shape"][0] * s["shape"][1] * s["shape"][2] * s["shape"][3], s["shape"]))


def measure(case: dict, dtype: torch.dtype, channels_last: bool, repeats: int, sms: int) -> dict:
    """Errors vs float64 and interleaved timings of old / new / torch for one shape and layout."""
    shape, groups, silu = case["shape"], case["groups"], case["silu"]
    g = torch.Generator(device="cuda").manual_seed(0)
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
    for fn in fns.values():  # warm-up and JIT compile
        cuda_event_times_ms(fn, 3)
    times = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved
        for name, fn in fns.items():
            times[name] += cuda_event_times_ms(fn, 1)
    is_cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    plan = plan_group_norm(tuple(shape), groups, x.element_size(), is_cl, sms)
    old_plan = single_plan(shape[0], shape[1], shape[2] * shape[3], groups, x.element_size())
    row = {"shape": list(shape), "groups": groups, "silu": silu, "in": case["in"],
           "layout": "channels_last" if is_cl else "nchw", "plan": plan.path,
           "programs": [launch.programs for launch in plan.launches], "max_abs_error_vs_float64": errors,
           "modelled_us_h100_bandwidth": {"old": round(estimate_us(old_plan.launches, sms=sms), 2),
                                          "new": round(estimate_us(plan.launches, sms=sms), 2)}}
    for name, t in times.items():
        row[f"{name}_median_ms"] = statistics.median(t)
        row[f"{name}_p90_ms"] = sorted(t)[int(0.9 * len(t))]
    row["new_vs_torch"] = row["torch_median_ms"] / row["new_median_ms"]
    row["new_vs_old"] = row["old_median_ms"] / row["new_median_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pixels", type=int, nargs="+", default=[512, 1024, 1536])
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for case in roofline_shapes(args.pixels):
        for channels_last in (False, True):
            if channels_last and case["shape"][3] == 1:
                continue  # 3-D inputs (VAE attention) have no channels-last form
            row = measure(case, DTYPES[args.dtype], channels_last, args.repeats, sms)
            rows.append(row)
            print(f"{'x'.join(map(str, row['shape']))} {row['layout']:13s} {'silu' if row['silu'] else 'plain'} "
                  f"{row['plan']:6s}: old {row['old_median_ms']:.4f} ms, new {row['new_median_ms']:.4f} ms, "
                  f"torch {row['torch_median_ms']:.4f} ms, new vs torch {row['new_vs_torch']:.2f}x, "
                  f"new vs old {row['new_vs_old']:.2f}x, error {row['max_abs_error_vs_float64']['new']:.2e}", flush=True)
    record = {"benchmark": "group_norm_gpu", "gpu": torch.cuda.get_device_name(), "sms": sms, "dtype": args.dtype,
              "torch": torch.__version__, "machine": platform.machine(), "repeats": args.repeats, "results": rows}
    path = REPO / "benchmarks/results/group_norm_gpu.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Fused GroupNorm+SiLU (Triton) vs PyTorch's GroupNorm then SiLU, fp16, on a CUDA GPU.

SD1.5/SDXL UNet shapes (channels x latent size, batch 2 for CFG), interleaved timing with CUDA
events, median and p90, ratio printed; results in benchmarks/results/group_norm_gpu.json.
python benchmarks/group_norm_gpu.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from resadapter_rt.kernels import group_norm

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(320, 64), (640, 32), (1280, 16), (320, 128), (640, 64), (1280, 32), (2560, 16), (1920, 32), (960, 64)]


def time_ms(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)")
    rows = []
    for channels, size in SHAPES:
        for channels_last in (False, True):
            x = torch.randn(args.batch, channels, size, size, device="cuda", dtype=torch.float16)
            if channels_last:
                x = x.to(memory_format=torch.channels_last)
            weight = torch.randn(channels, device="cuda", dtype=torch.float16)
            bias = torch.randn(channels, device="cuda", dtype=torch.float16)
            fused = lambda: group_norm(x, 32, weight, bias, activation="silu")  # noqa: E731
            eager = lambda: F.silu(F.group_norm(x, 32, weight, bias))  # noqa: E731
            error = float((fused().float() - eager().float()).abs().max())
            for fn in (fused, eager):  # warm-up and compile
                time_ms(fn, 5)
            fused_t, eager_t = [], []
            for _ in range(args.repeats):  # interleaved
                fused_t += time_ms(fused, 1)
                eager_t += time_ms(eager, 1)
            row = {"channels": channels, "latent": size, "batch": args.batch, "channels_last": channels_last,
                   "fused_median_ms": statistics.median(fused_t), "fused_p90_ms": sorted(fused_t)[int(0.9 * len(fused_t))],
                   "torch_median_ms": statistics.median(eager_t), "torch_p90_ms": sorted(eager_t)[int(0.9 * len(eager_t))],
                   "speedup": statistics.median(eager_t) / statistics.median(fused_t), "max_abs_diff": error}
            rows.append(row)
            print(f"{channels}x{size}x{size} {'NHWC' if channels_last else 'NCHW'}: fused {row['fused_median_ms']:.3f} ms, "
                  f"torch {row['torch_median_ms']:.3f} ms, speedup {row['speedup']:.2f}x", flush=True)
    record = {"benchmark": "group_norm_silu_fp16", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
              "machine": platform.machine(), "repeats": args.repeats, "results": rows}
    path = REPO / "benchmarks/results/group_norm_gpu.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

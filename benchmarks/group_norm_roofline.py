"""Roofline model of GroupNorm(+SiLU) at every GroupNorm shape of SD1.5 / SDXL (UNet + VAE decoder).

For each shape (from diffusers' own models, ``resadapter_rt.kernels.sd_shapes``) at 512², 1024²
and 1536², NCHW and channels-last, fp16 (bf16 moves the same bytes, fp32 twice as many), and for an
H100 SXM (132 SMs, 3.35 TB/s) and an RTX 4090 (128 SMs, 1.01 TB/s): DRAM bytes moved, programs per
SM of every launch and the modelled time of

* old: the single-launch kernel, one program per (sample, group), two passes over the data;
* new: what ``plan_group_norm`` picks (the split path, or the single launch where that is modelled
  faster);
* torch: ``F.group_norm`` then ``F.silu`` on CUDA, as aten's group_norm_kernel.cu runs it: row
  moments with one 512-thread block per (sample, group), a per-(sample, channel) scale/shift
  kernel, an elementwise apply, and SiLU as another elementwise kernel.

Time per launch = bytes / (bandwidth x fill) + LAUNCH_US, fill = resident warps / (16 per SM),
at most 1 (``launch_plan.estimate_us``). Writes group_norm_roofline.{json,md} into a new directory under
benchmarks/results/tmp/ (or --out DIR); --update-results replaces the committed ones in benchmarks/results/.
python benchmarks/group_norm_roofline.py [--out DIR | --update-results]
"""

from __future__ import annotations

import argparse
import json

from resadapter_rt.bench.results import add_output_arguments, output_dir, write_text
from resadapter_rt.kernels import launch_plan as lp
from resadapter_rt.kernels.sd_shapes import MODELS, NormShape, group_norm_shapes

DEVICES = {"H100 SXM": (132, 3.35e12), "RTX 4090": (128, 1.01e12)}
PIXELS = (512, 1024, 1536)
DTYPES = {"fp16": 2}
TORCH_BLOCK_WARPS = 16  # kCUDABlockReduceNumThreads = 512 threads per row-moments block
ASSUMPTIONS = {
    "old": "single launch, N*G programs of 4 warps: reads x twice (statistics, normalise), writes y once: 3*E*s",
    "new_split": "stats reads x (E*s) and writes fp32 (mean, M2) per channel per chunk; finalize reads those and "
                 "writes (mean, rstd) per group; apply reads x + stats + affine and writes y: 2*E*s read, E*s written",
    "torch": "row moments read x (N*G blocks of 512 threads), scale/shift per (n, c) in fp32, apply reads x writes y, "
             "SiLU reads y writes y: 3*E*s read + 2*E*s written with SiLU, 2*E*s + E*s without; channels-last input "
             "is first copied to NCHW (+2*E*s, one more launch: native_group_norm uses X.contiguous() on CUDA, "
             "aten/src/ATen/native/group_norm.cpp) and the output is NCHW (a copy back is not counted)",
    "fill": f"fraction of bandwidth = min(1, programs * warps / ({lp.WARPS_TO_SATURATE} * SMs)); optimistic for "
            "kernels that loop over their data, so modelled old/torch times are lower bounds",
    "launch_us": lp.LAUNCH_US,
    "weights": "affine weight and bias in the input dtype; E = N*C*H*W elements of s bytes",
    "l2": "no L2 reuse between passes is assumed; a tensor well under the L2 (50 MB H100, 72 MB RTX 4090) may get "
          "its second read from L2 in every variant, which lowers all three by up to a third",
}


def torch_launches(n: int, c: int, hw: int, groups: int, s: int, silu: bool, channels_last: bool,
                   sms: int) -> tuple[lp.Launch, ...]:
    """aten's CUDA GroupNorm (+ F.silu) as launches with their DRAM bytes."""
    data = n * c * hw * s
    elementwise = max(1, data // (4 * 128 * 16))  # blocks of 128 threads x 4 vectors of 16 B: always fills
    launches = []
    if channels_last:
        launches.append(lp.Launch("to_nchw", elementwise, data, data))
    row_warps = TORCH_BLOCK_WARPS if c // groups * hw >= 512 else 1
    launches += [
        lp.Launch("row_moments", n * groups, data, 2 * n * groups * (s + 4), row_warps),
        lp.Launch("fused_params", max(1, n * c // 256), 2 * n * groups * 4 + 2 * c * s, 2 * n * c * 4, 8),
        lp.Launch("apply", elementwise, data + 2 * n * c * 4, data),
    ]
    if silu:
        launches.append(lp.Launch("silu", elementwise, data, data))
    return tuple(launches)


def describe(launches: tuple[lp.Launch, ...], sms: int, bandwidth: float) -> dict:
    """Bytes, modelled time and per-launch programs (per SM) of one implementation on one device."""
    return {"bytes": sum(l.bytes_moved for l in launches), "us": round(lp.estimate_us(launches, bandwidth, sms), 3),
            "launches": [{"kernel": l.kernel, "programs": l.programs, "programs_per_sm": round(l.programs / sms, 2),
                          "warps": l.warps, "bytes_read": l.bytes_read, "bytes_written": l.bytes_written}
                         for l in launches]}


def model_row(norm: NormShape, pixels: int, dtype: str, channels_last: bool) -> dict:
    """old / new / torch on every device for one GroupNorm shape."""
    n, c, h, w = norm.shape
    s = DTYPES[dtype]
    row = {"model": norm.model, "pixels": pixels, "shape": list(norm.shape), "groups": norm.groups, "silu": norm.silu,
           "count": norm.count, "dtype": dtype, "layout": "channels_last" if channels_last else "nchw"}
    for device, (sms, bandwidth) in DEVICES.items():
        old = lp.single_plan(n, c, h * w, norm.groups, s)
        new = lp.plan_group_norm(norm.shape, norm.groups, s, channels_last, sms, bandwidth=bandwidth)
        split = lp.split_plan(n, c, h * w, norm.groups, s, channels_last, sms)
        entry = {"old": describe(old.launches, sms, bandwidth),
                 "new": {"path": new.path, **describe(new.launches, sms, bandwidth)},
                 "split_max_programs_per_sm": round(split.max_programs / sms, 2),
                 "torch": describe(torch_launches(n, c, h * w, norm.groups, s, norm.silu, channels_last, sms),
                                   sms, bandwidth)}
        entry["new_vs_torch"] = round(entry["torch"]["us"] / entry["new"]["us"], 2)
        entry["new_vs_old"] = round(entry["old"]["us"] / entry["new"]["us"], 2)
        row[device] = entry
    return row


def totals(rows: list[dict]) -> list[dict]:
    """Modelled time of all GroupNorms of one forward (count-weighted) per model, size, dtype, layout, device."""
    out = {}
    for row in rows:
        for device in DEVICES:
            key = (row["model"], row["pixels"], row["dtype"], row["layout"], device)
            total = out.setdefault(key, {"old_us": 0.0, "new_us": 0.0, "torch_us": 0.0, "norms": 0})
            for kind in ("old", "new", "torch"):
                total[f"{kind}_us"] += row["count"] * row[device][kind]["us"]
            total["norms"] += row["count"]
    return [{"model": k[0], "pixels": k[1], "dtype": k[2], "layout": k[3], "device": k[4], "norms": v["norms"],
             **{name: round(v[name], 1) for name in ("old_us", "new_us", "torch_us")},
             "new_vs_torch": round(v["torch_us"] / v["new_us"], 2), "new_vs_old": round(v["old_us"] / v["new_us"], 2)}
            for k, v in out.items()]


def markdown(rows: list[dict], summary: list[dict]) -> str:
    """The summary table (per model and size) and the per-shape table (fp16 NCHW, H100)."""
    lines = ["# GroupNorm(+SiLU) roofline model (`python benchmarks/group_norm_roofline.py`)", "",
             "Modelled, not measured: DRAM bytes / (HBM bandwidth x fill) + "
             f"{lp.LAUNCH_US} us per launch; fill = min(1, resident warps / {lp.WARPS_TO_SATURATE} per SM). "
             "Byte counts: " + "; ".join(f"**{k}**: {v}" for k, v in ASSUMPTIONS.items() if k in ("old", "new_split", "torch")),
             "", "## All GroupNorms of one forward, fp16 (count-weighted sum, us)", "",
             "| model | px | layout | norms | H100 old | H100 new | H100 torch | H100 new vs torch | 4090 old | 4090 new | 4090 torch | 4090 new vs torch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    by_key = {(t["model"], t["pixels"], t["dtype"], t["layout"], t["device"]): t for t in summary}
    for model in MODELS:
        for pixels in PIXELS:
            for layout in ("nchw", "channels_last"):
                h, r = by_key[(model, pixels, "fp16", layout, "H100 SXM")], by_key[(model, pixels, "fp16", layout, "RTX 4090")]
                lines.append(f"| {model} | {pixels} | {layout} | {h['norms']} | {h['old_us']} | {h['new_us']} | {h['torch_us']} | "
                             f"{h['new_vs_torch']}x | {r['old_us']} | {r['new_us']} | {r['torch_us']} | {r['new_vs_torch']}x |")
    lines += ["", "## Per shape, fp16 NCHW, H100 SXM (programs per SM of each streaming launch; modelled us)", "",
              "| model | px | shape | SiLU | x | MB moved old / new / torch | old progs/SM | new path | new progs/SM (stats / apply) | old us | new us | torch us |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        if row["dtype"] != "fp16" or row["layout"] != "nchw":
            continue
        d = row["H100 SXM"]
        mb = " / ".join(f"{d[k]['bytes'] / 1e6:.1f}" for k in ("old", "new", "torch"))
        streaming = " / ".join(str(l["programs_per_sm"]) for l in d["new"]["launches"] if l["kernel"] != "finalize")
        lines.append(f"| {row['model']} | {row['pixels']} | {'x'.join(map(str, row['shape']))} | {'yes' if row['silu'] else 'no'} | "
                     f"{row['count']} | {mb} | {d['old']['launches'][0]['programs_per_sm']} | {d['new']['path']} | {streaming} | "
                     f"{d['old']['us']} | {d['new']['us']} | {d['torch']['us']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args()
    results = output_dir(args, "group_norm_roofline")
    rows = [model_row(norm, pixels, dtype, channels_last)
            for model in MODELS for pixels in PIXELS for norm in group_norm_shapes(model, pixels)
            for dtype in DTYPES for channels_last in (False, True)]
    summary = totals(rows)
    record = {"benchmark": "group_norm_roofline", "kind": "model (not measured)", "devices":
              {k: {"sms": v[0], "bandwidth_bytes_per_s": v[1]} for k, v in DEVICES.items()},
              "assumptions": ASSUMPTIONS, "tiles": {("channels_last" if k else "nchw"): vars(v) for k, v in lp.TILES.items()},
              "programs_per_sm_target": lp.PROGRAMS_PER_SM, "totals": summary, "rows": rows}
    write_text(results / "group_norm_roofline.json", json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
    write_text(results / "group_norm_roofline.md", markdown(rows, summary))
    for t in summary:
        if t["dtype"] == "fp16" and t["device"] == "H100 SXM":
            print(f"{t['model']:12s} {t['pixels']:5d} {t['layout']:13s} old {t['old_us']:9.1f} us  new {t['new_us']:8.1f} us  "
                  f"torch {t['torch_us']:8.1f} us  new vs torch {t['new_vs_torch']}x")
    print(f"wrote {results / 'group_norm_roofline.json'} and .md")


if __name__ == "__main__":
    main()

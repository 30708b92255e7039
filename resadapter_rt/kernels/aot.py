"""Ahead-of-time compilation of every GroupNorm kernel variant for real GPU targets, without a GPU.

Triton's ``triton.compile(ASTSource(...), target=GPUTarget("cuda", capability, 32))`` lowers a
kernel to PTX and runs the ptxas bundled in its wheel (``ptxas`` below sm_90, ``ptxas-blackwell``
from sm_90 on, which also knows sm_120). Each variant is specialised the way the JIT would
specialise it for SD1.5's (2, 320, 64, 64) with 32 groups (16-byte aligned pointers, integers
divisible by 16 marked so, integers equal to 1 made constants), and ptxas' own ``-v`` report of
that compilation gives registers, spill stores/loads and stack frame per thread.

Kernels defined under ``TRITON_INTERPRET=1`` are interpreted functions that cannot be compiled, so
callers in an interpreting process run ``python -m resadapter_rt.kernels.aot`` (JSON on stdout).
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass

from .launch_plan import FINALIZE_BLOCK, NUM_WARPS, SINGLE_BLOCK, TILES, split_plan

TARGETS = (80, 86, 89, 90, 120)  # A100; RTX 30xx/A10; RTX 40xx/L4/L40; H100/H200; RTX 50xx
DTYPES = ("fp16", "bf16", "fp32")
KERNELS = ("single", "stats", "finalize", "apply")
REFERENCE_SHAPE = (2, 320, 64, 64)
REFERENCE_GROUPS = 32
_PTXAS_LINE = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


@dataclass(frozen=True)
class Variant:
    """One compiled kernel: which kernel, input dtype, fused SiLU and layout (None where irrelevant)."""

    kernel: str
    dtype: str | None = None
    silu: bool | None = None
    channels_last: bool | None = None

    @property
    def name(self) -> str:
        parts = [self.kernel, self.dtype]
        if self.silu is not None:
            parts.append("silu" if self.silu else "plain")
        if self.channels_last is not None:
            parts.append("nhwc" if self.channels_last else "nchw")
        return "-".join(p for p in parts if p)


def variants(kernels: tuple[str, ...] = KERNELS) -> tuple[Variant, ...]:
    """Every variant the runtime can launch: dtype x SiLU x layout (stats has no SiLU; finalize is fp32 only)."""
    out = []
    for kernel in kernels:
        if kernel == "finalize":
            out.append(Variant(kernel))
            continue
        for dtype in DTYPES:
            for channels_last in (False, True):
                for silu in ((None,) if kernel == "stats" else (False, True)):
                    out.append(Variant(kernel, dtype, silu, channels_last))
    return tuple(out)


def _arguments(variant: Variant) -> tuple[object, dict[str, object]]:
    """The jitted function and its arguments at the reference shape: "*dtype" for pointers, else values."""
    from . import _triton_group_norm as k

    n, c, h, w = REFERENCE_SHAPE
    hw, cpg = h * w, c // REFERENCE_GROUPS
    plan = split_plan(n, c, hw, REFERENCE_GROUPS, 2, bool(variant.channels_last))
    tile = TILES[bool(variant.channels_last)]
    data, f32 = f"*{variant.dtype}", "*fp32"
    if variant.kernel == "single":
        strides = (1, c) if variant.channels_last else (hw, 1)  # stride_c, stride_hw
        return k._group_norm_kernel, dict(
            x_ptr=data, out_ptr=data, w_ptr=data, b_ptr=data, HW=hw, C=c, CPG=cpg, stride_n=c * hw,
            stride_c=strides[0], stride_hw=strides[1], eps=1e-5, SILU=variant.silu,
            CHANNELS_INNER=variant.channels_last, BLOCK_SIZE=SINGLE_BLOCK)
    if variant.kernel == "stats":
        return k._partial_stats_kernel, dict(
            x_ptr=data, mean_ptr=f32, m2_ptr=f32, C=c, HW=hw, hw_chunk=plan.hw_chunk, n_chunks=plan.n_chunks,
            CHANNELS_INNER=variant.channels_last, BLOCK_HW=tile.block_hw, BLOCK_C=tile.block_c)
    if variant.kernel == "finalize":
        return k._finalize_stats_kernel, dict(
            mean_ptr=f32, m2_ptr=f32, stats_ptr=f32, C=c, HW=hw, CPG=cpg, hw_chunk=plan.hw_chunk,
            n_chunks=plan.n_chunks, eps=1e-5, BLOCK=FINALIZE_BLOCK)
    return k._apply_kernel, dict(
        x_ptr=data, out_ptr=data, w_ptr=data, b_ptr=data, stats_ptr=f32, C=c, HW=hw, CPG=cpg, SILU=variant.silu,
        CHANNELS_INNER=variant.channels_last, BLOCK_HW=tile.block_hw, BLOCK_C=tile.block_c)


def specialize(fn, arguments: dict[str, object]) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) for ``ASTSource`` as Triton's JIT would derive them."""
    constexpr_names = {p.name for p in fn.params if p.is_constexpr}
    signature, constexprs, attrs = {}, {}, {}
    for index, (name, value) in enumerate(arguments.items()):
        if name in constexpr_names or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name], constexprs[name] = "constexpr", value
        elif isinstance(value, str):
            signature[name], attrs[(index,)] = value, [["tt.divisibility", 16]]
        elif isinstance(value, int):
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"
    return signature, constexprs, attrs


def parse_ptxas(log: str) -> dict[str, int]:
    """Registers, stack frame and spill bytes from a ``ptxas -v`` report of one kernel."""
    registers, spills = _PTXAS_LINE.search(log), _SPILLS.search(log)
    if registers is None or spills is None:
        raise ValueError(f"no register/spill report in the ptxas output: {log[:200]!r}")
    stack, stores, loads = map(int, spills.groups())
    return {"registers": int(registers.group(1)), "stack_bytes": stack, "spill_stores": stores, "spill_loads": loads}


def compile_variant(variant: Variant, capability: int) -> dict:
    """Compile ``variant`` for ``sm_<capability>``; its ptxas report and the sizes of PTX and cubin."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn, arguments = _arguments(variant)
    signature, constexprs, attrs = specialize(fn, arguments)
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    log = io.StringIO()
    with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        triton.knobs.compilation.always_compile = True  # a cache hit would skip ptxas and its report
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options={"num_warps": NUM_WARPS})
    return {"variant": variant.name, "kernel": variant.kernel, "dtype": variant.dtype or "fp32", "silu": variant.silu,
            "layout": None if variant.channels_last is None else ("nhwc" if variant.channels_last else "nchw"),
            "target": f"sm_{capability}", **parse_ptxas(log.getvalue()), "shared_bytes": compiled.metadata.shared,
            "ptx_bytes": len(compiled.asm["ptx"]), "cubin_bytes": len(compiled.asm["cubin"])}


def ptxas_versions() -> dict[str, str]:
    """The bundled ptxas release for each of ``TARGETS`` (``ptxas`` below sm_90, ``ptxas-blackwell`` from it)."""
    from triton.backends.nvidia.compiler import get_ptxas_version

    return {f"sm_{cap}": re.search(r"release [\d.]+, V[\d.]+", get_ptxas_version(cap)).group(0) for cap in TARGETS}


def collect(targets: tuple[int, ...] = TARGETS) -> dict:
    """Compile every variant for every target; with the toolchain versions and the reference specialisation."""
    import os

    import triton

    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("TRITON_INTERPRET=1 turns the kernels into interpreted functions; unset it to compile")
    versions = ptxas_versions()
    return {"triton": triton.__version__, "ptxas": {f"sm_{cap}": versions[f"sm_{cap}"] for cap in targets},
            "reference_shape": list(REFERENCE_SHAPE), "reference_groups": REFERENCE_GROUPS, "num_warps": NUM_WARPS,
            "results": [compile_variant(v, cap) for cap in targets for v in variants()]}


if __name__ == "__main__":  # python -m resadapter_rt.kernels.aot: the whole matrix as JSON on stdout
    import json
    import sys

    json.dump(collect(), sys.stdout)

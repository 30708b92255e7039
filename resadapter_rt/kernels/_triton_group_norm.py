"""The Triton kernels behind ``group_norm`` (imported only when Triton runs).

``launch`` runs a ``LaunchPlan`` (see ``launch_plan``): the single-launch kernel, or the split
path's stats -> finalize -> apply kernels. All statistics are fp32 and merged with Chan's parallel
(count, mean, M2) formula, never as E[x^2] - mean^2, so inputs with a large mean stay exact.
Inputs are contiguous NCHW or contiguous channels-last, viewed as [N, C, HW]; ``CHANNELS_INNER``
says which of C and HW is the stride-1 dimension.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .launch_plan import FINALIZE_BLOCK, NUM_WARPS, SINGLE_BLOCK, LaunchPlan


@triton.jit
def _element_offsets(idx, HW, CPG, stride_c, stride_hw, CHANNELS_INNER: tl.constexpr):
    """Channel-in-group and memory offset of the group's idx-th element, read in memory order."""
    if CHANNELS_INNER:
        cc = idx % CPG
        hw = idx // CPG
    else:
        cc = idx // HW
        hw = idx % HW
    return cc, cc.to(tl.int64) * stride_c + hw.to(tl.int64) * stride_hw


@triton.jit
def _chan_merge(count, mean, m2, n_b, mean_b, m2_b):
    """Chan et al.'s pairwise merge of (count, mean, M2) with a block's (n_b, mean_b, m2_b)."""
    total = count + n_b
    delta = mean_b - mean
    return total, mean + delta * (n_b / total), m2 + m2_b + delta * delta * (count * n_b / total)


@triton.jit
def _group_norm_kernel(x_ptr, out_ptr, w_ptr, b_ptr, HW, C, CPG, stride_n, stride_c, stride_hw, eps,
                       SILU: tl.constexpr, CHANNELS_INNER: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Single launch: one program per (sample, group), statistics pass then normalise pass."""
    pid = tl.program_id(0)
    groups = C // CPG
    n = pid // groups
    g = pid % groups
    size = CPG * HW
    base = n.to(tl.int64) * stride_n + (g * CPG).to(tl.int64) * stride_c
    shift = tl.load(x_ptr + base).to(tl.float32)  # statistics of x - (the group's first value): small sums
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, size, BLOCK_SIZE):
        idx = start + tl.arange(0, BLOCK_SIZE)
        mask = idx < size
        _, offset = _element_offsets(idx, HW, CPG, stride_c, stride_hw, CHANNELS_INNER)
        v = tl.where(mask, tl.load(x_ptr + base + offset, mask=mask, other=0.0).to(tl.float32) - shift, 0.0)
        n_b = tl.sum(mask.to(tl.float32), axis=0)
        mean_b = tl.sum(v, axis=0) / n_b
        d = tl.where(mask, v - mean_b, 0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, n_b, mean_b, tl.sum(d * d, axis=0))
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    mean += shift
    for start in range(0, size, BLOCK_SIZE):
        idx = start + tl.arange(0, BLOCK_SIZE)
        mask = idx < size
        cc, offset = _element_offsets(idx, HW, CPG, stride_c, stride_hw, CHANNELS_INNER)
        offset += base
        v = tl.load(x_ptr + offset, mask=mask, other=0.0).to(tl.float32)
        channel = g * CPG + cc
        w = tl.load(w_ptr + channel, mask=mask, other=1.0).to(tl.float32)
        b = tl.load(b_ptr + channel, mask=mask, other=0.0).to(tl.float32)
        y = (v - mean) * rstd * w + b
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(out_ptr + offset, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tile_origin(pid, C, n_chunks, CHANNELS_INNER: tl.constexpr, BLOCK_C: tl.constexpr):
    """(sample, first channel, H*W chunk) of a program; neighbouring programs are neighbours in memory."""
    channel_blocks = tl.cdiv(C, BLOCK_C)
    if CHANNELS_INNER:  # memory order n, hw, c: channel block varies fastest
        cb = pid % channel_blocks
        rest = pid // channel_blocks
        chunk = rest % n_chunks
        n = rest // n_chunks
    else:  # memory order n, c, hw: H*W chunk varies fastest
        chunk = pid % n_chunks
        rest = pid // n_chunks
        cb = rest % channel_blocks
        n = rest // channel_blocks
    return n, cb * BLOCK_C, chunk


@triton.jit
def _tile_pointers(ptr, n, c0, hw0, C, HW, CHANNELS_INNER: tl.constexpr, BLOCK_HW: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    """Pointers [BLOCK_HW, BLOCK_C] and mask of the tile at (sample n, channel c0, position hw0)."""
    r_hw = tl.arange(0, BLOCK_HW)[:, None]
    r_c = tl.arange(0, BLOCK_C)[None, :]
    if CHANNELS_INNER:
        ptrs = ptr + ((n.to(tl.int64) * HW + hw0) * C + c0) + (r_hw * C + r_c)
    else:
        ptrs = ptr + ((n.to(tl.int64) * C + c0) * HW + hw0) + (r_c * HW + r_hw)
    mask = (hw0 + r_hw < HW) & (c0 + r_c < C)
    return ptrs, mask


@triton.jit
def _partial_stats_kernel(x_ptr, mean_ptr, m2_ptr, C, HW, hw_chunk, n_chunks, CHANNELS_INNER: tl.constexpr,
                          BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per channel of a block, (mean, M2) over one chunk of H*W positions -> partials [N, n_chunks, C]."""
    n, c0, chunk = _tile_origin(tl.program_id(0), C, n_chunks, CHANNELS_INNER, BLOCK_C)
    hw_lo = chunk * hw_chunk
    hw_hi = tl.minimum(hw_lo + hw_chunk, HW)
    c = c0 + tl.arange(0, BLOCK_C)
    # statistics of x - (each channel's first value in the chunk): small sums, no cancellation
    first, _ = _tile_pointers(x_ptr, n, c0, hw_lo, C, HW, CHANNELS_INNER, 1, BLOCK_C)
    shift = tl.sum(tl.load(first, mask=(c < C)[None, :], other=0.0).to(tl.float32), axis=0)
    count = 0.0
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    for hw0 in range(hw_lo, hw_hi, BLOCK_HW):
        ptrs, mask = _tile_pointers(x_ptr, n, c0, hw0, C, HW, CHANNELS_INNER, BLOCK_HW, BLOCK_C)
        v = tl.where(mask, tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) - shift[None, :], 0.0)
        n_b = tl.minimum(hw_hi - hw0, BLOCK_HW).to(tl.float32)
        mean_b = tl.sum(v, axis=0) / n_b
        d = tl.where(mask, v - mean_b[None, :], 0.0)
        count, mean, m2 = _chan_merge(count, mean, m2, n_b, mean_b, tl.sum(d * d, axis=0))
    out = (n.to(tl.int64) * n_chunks + chunk) * C + c
    tl.store(mean_ptr + out, mean + shift, mask=c < C)
    tl.store(m2_ptr + out, m2, mask=c < C)


@triton.jit
def _finalize_stats_kernel(mean_ptr, m2_ptr, stats_ptr, C, HW, CPG, hw_chunk, n_chunks, eps,
                           BLOCK: tl.constexpr):
    """One program per (sample, group): merge its n_chunks x CPG partials -> (mean, rstd) in stats."""
    pid = tl.program_id(0)
    groups = C // CPG
    n = pid // groups
    g = pid % groups
    size = n_chunks * CPG
    # deviations from the group's first partial mean keep the weighted sums small
    shift = tl.load(mean_ptr + n.to(tl.int64) * n_chunks * C + g * CPG)
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, size, BLOCK):
        idx = start + tl.arange(0, BLOCK)
        mask = idx < size
        chunk = idx // CPG
        at = (n.to(tl.int64) * n_chunks + chunk) * C + g * CPG + idx % CPG
        m = tl.load(mean_ptr + at, mask=mask, other=0.0) - shift
        q = tl.load(m2_ptr + at, mask=mask, other=0.0)
        k = tl.where(mask, tl.minimum(hw_chunk, HW - chunk * hw_chunk), 0).to(tl.float32)
        n_b = tl.sum(k, axis=0)
        mean_b = tl.sum(k * m, axis=0) / n_b
        d = m - mean_b
        count, mean, m2 = _chan_merge(count, mean, m2, n_b, mean_b, tl.sum(q + k * d * d, axis=0))
    tl.store(stats_ptr + 2 * pid, mean + shift)
    tl.store(stats_ptr + 2 * pid + 1, 1.0 / tl.sqrt(m2 / count + eps))


@triton.jit
def _apply_kernel(x_ptr, out_ptr, w_ptr, b_ptr, stats_ptr, C, HW, CPG, SILU: tl.constexpr,
                  CHANNELS_INNER: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program per tile: (x - mean) * rstd * w + b, optional SiLU, stored in the output dtype."""
    n_tiles = tl.cdiv(HW, BLOCK_HW)
    n, c0, tile = _tile_origin(tl.program_id(0), C, n_tiles, CHANNELS_INNER, BLOCK_C)
    c = c0 + tl.arange(0, BLOCK_C)
    c_mask = c < C
    group = n * (C // CPG) + c // CPG
    mean = tl.load(stats_ptr + 2 * group, mask=c_mask, other=0.0)
    rstd = tl.load(stats_ptr + 2 * group + 1, mask=c_mask, other=0.0)
    scale = rstd * tl.load(w_ptr + c, mask=c_mask, other=1.0).to(tl.float32)
    shift = tl.load(b_ptr + c, mask=c_mask, other=0.0).to(tl.float32)
    hw0 = tile * BLOCK_HW
    x_ptrs, mask = _tile_pointers(x_ptr, n, c0, hw0, C, HW, CHANNELS_INNER, BLOCK_HW, BLOCK_C)
    out_ptrs, _ = _tile_pointers(out_ptr, n, c0, hw0, C, HW, CHANNELS_INNER, BLOCK_HW, BLOCK_C)
    v = tl.load(x_ptrs, mask=mask, other=0.0).to(tl.float32)
    y = (v - mean[None, :]) * scale[None, :] + shift[None, :]
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(out_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x: torch.Tensor, out: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, num_groups: int, eps: float,
           silu: bool, channels_last: bool, plan: LaunchPlan) -> None:
    """Run ``plan`` on a contiguous NCHW or channels-last 4-D ``x`` into ``out`` (same layout)."""
    n, c, h, w = x.shape
    hw = h * w
    cpg = c // num_groups
    if plan.path == "single":
        # H and W flatten into one index: stride_hw is W's stride (NCHW: 1, channels-last: C)
        stride_n, stride_c, _, stride_w = x.stride()
        _group_norm_kernel[(n * num_groups,)](x, out, weight, bias, hw, c, cpg, stride_n, stride_c, stride_w, eps,
                                              SILU=silu, CHANNELS_INNER=channels_last, BLOCK_SIZE=SINGLE_BLOCK,
                                              num_warps=NUM_WARPS)
        return
    stats_launch, finalize_launch, apply_launch = plan.launches
    tile = plan.tile
    partials = torch.empty((2, n, plan.n_chunks, c), device=x.device, dtype=torch.float32)
    stats = torch.empty((n * num_groups, 2), device=x.device, dtype=torch.float32)
    _partial_stats_kernel[(stats_launch.programs,)](x, partials[0], partials[1], c, hw, plan.hw_chunk, plan.n_chunks,
                                                    CHANNELS_INNER=channels_last, BLOCK_HW=tile.block_hw,
                                                    BLOCK_C=tile.block_c, num_warps=NUM_WARPS)
    _finalize_stats_kernel[(finalize_launch.programs,)](partials[0], partials[1], stats, c, hw, cpg, plan.hw_chunk,
                                                        plan.n_chunks, eps, BLOCK=FINALIZE_BLOCK, num_warps=NUM_WARPS)
    _apply_kernel[(apply_launch.programs,)](x, out, weight, bias, stats, c, hw, cpg, SILU=silu,
                                            CHANNELS_INNER=channels_last, BLOCK_HW=tile.block_hw,
                                            BLOCK_C=tile.block_c, num_warps=NUM_WARPS)

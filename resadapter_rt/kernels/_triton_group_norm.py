"""The Triton kernel behind ``group_norm`` (imported only when Triton runs)."""

from __future__ import annotations

import triton
import triton.language as tl

BLOCK = 1024


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
def _group_norm_kernel(x_ptr, out_ptr, w_ptr, b_ptr, HW, C, CPG, stride_n, stride_c, stride_hw, eps,
                       SILU: tl.constexpr, CHANNELS_INNER: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    pid = tl.program_id(0)
    groups = C // CPG
    n = pid // groups
    g = pid % groups
    size = CPG * HW
    base = n.to(tl.int64) * stride_n + (g * CPG).to(tl.int64) * stride_c
    # pass 1: Chan's parallel (count, mean, M2) over blocks, in fp32
    count = 0.0
    mean = 0.0
    m2 = 0.0
    for start in range(0, size, BLOCK_SIZE):
        idx = start + tl.arange(0, BLOCK_SIZE)
        mask = idx < size
        _, offset = _element_offsets(idx, HW, CPG, stride_c, stride_hw, CHANNELS_INNER)
        v = tl.load(x_ptr + base + offset, mask=mask, other=0.0).to(tl.float32)
        n_b = tl.sum(mask.to(tl.float32), axis=0)
        mean_b = tl.sum(v, axis=0) / n_b
        d = tl.where(mask, v - mean_b, 0.0)
        m2_b = tl.sum(d * d, axis=0)
        total = count + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / total)
        m2 = m2 + m2_b + delta * delta * (count * n_b / total)
        count = total
    rstd = 1.0 / tl.sqrt(m2 / count + eps)
    # pass 2: normalise, affine, activation, store in the input dtype
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


def launch(x, out, weight, bias, num_groups, eps, silu, channels_last):
    n, c, h, w = x.shape
    hw = h * w
    # H and W flatten into one index: stride_hw is W's stride (NCHW: 1, channels-last: C)
    stride_n, stride_c, _, stride_w = x.stride()
    grid = (n * num_groups,)
    _group_norm_kernel[grid](x, out, weight, bias, hw, c, c // num_groups, stride_n, stride_c, stride_w, eps,
                             SILU=silu, CHANNELS_INNER=channels_last, BLOCK_SIZE=BLOCK)

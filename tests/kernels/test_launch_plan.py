"""Launch plans of the GroupNorm kernels, checked without a GPU, and the SD GroupNorm shapes behind them."""

from __future__ import annotations

import math

import pytest

from resadapter_rt.kernels import launch_plan as lp
from resadapter_rt.kernels.sd_shapes import MODELS, group_norm_shapes

H100_PROGRAMS = lp.MIN_PROGRAMS_PER_SM * lp.H100_SMS  # 528
SIZES = {"fp16": 2, "bf16": 2, "fp32": 4}


@pytest.mark.parametrize("dtype", SIZES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_sd15_first_block_fills_an_h100(dtype, channels_last):
    """(2, 320, 64, 64), 32 groups: SD1.5's first block at 512² with CFG; the old kernel had 64 programs."""
    plan = lp.plan_group_norm((2, 320, 64, 64), 32, SIZES[dtype], channels_last)
    stats, finalize, apply = plan.launches
    assert plan.path == "split" and plan.max_programs >= H100_PROGRAMS
    assert stats.programs >= H100_PROGRAMS and apply.programs >= H100_PROGRAMS and finalize.programs == 64
    old = lp.single_plan(2, 320, 64 * 64, 32, SIZES[dtype])
    assert old.max_programs == 64
    assert plan.bytes_moved < 1.03 * old.bytes_moved  # both read twice and write once; partials add < 3%
    assert lp.estimate_us(old.launches) > 3 * lp.estimate_us(plan.launches)


@pytest.mark.parametrize("shape,channels_last", [((3, 320, 13, 29), False), ((3, 320, 13, 29), True),
                                                  ((1, 40, 45, 31), False), ((2, 128, 1536, 1536), True),
                                                  ((2, 2560, 24, 24), False), ((1, 512, 36864, 1), False)])
@pytest.mark.parametrize("sms", [1, 132])
def test_split_chunks_cover_every_position_once(shape, channels_last, sms):
    n, c, h, w = shape
    plan = lp.split_plan(n, c, h * w, 32 if c % 32 == 0 else 4, 2, channels_last, sms)
    tile = plan.tile
    assert plan.hw_chunk % tile.block_hw == 0
    assert (plan.n_chunks - 1) * plan.hw_chunk < h * w <= plan.n_chunks * plan.hw_chunk
    columns = n * math.ceil(c / tile.block_c)
    assert plan.launches[0].programs == columns * plan.n_chunks
    assert plan.launches[2].programs == columns * math.ceil(h * w / tile.block_hw)


def test_small_tensors_keep_the_single_launch():
    """SD1.5's deepest block at 256²: 41k elements, launch-bound; three launches cannot pay off."""
    plan = lp.plan_group_norm((2, 1280, 4, 4), 32, 2)
    assert plan.path == "single" and plan.launches[0].programs == 64
    assert lp.estimate_us(plan.launches) < lp.estimate_us(lp.split_plan(2, 1280, 16, 32, 2, False).launches)


def test_forced_paths_and_bad_path():
    assert lp.plan_group_norm((2, 1280, 4, 4), 32, 2, path="split").path == "split"
    assert lp.plan_group_norm((2, 320, 64, 64), 32, 2, path="single").path == "single"
    with pytest.raises(ValueError, match="path must be None, 'single' or 'split', not 'both'"):
        lp.plan_group_norm((2, 320, 64, 64), 32, 2, path="both")


def test_sd_shapes_come_from_diffusers():
    """Norm counts per forward: two per ResNet block + conv_norm_out with SiLU, one per transformer without."""
    silu = {m: sum(s.count for s in group_norm_shapes(m, 512) if s.silu) for m in MODELS}
    plain = {m: sum(s.count for s in group_norm_shapes(m, 512) if not s.silu) for m in MODELS}
    assert silu == {"sd15-unet": 2 * 22 + 1, "sdxl-unet": 2 * 17 + 1, "vae-decoder": 2 * 14 + 1}
    assert plain == {"sd15-unet": 16, "sdxl-unet": 11, "vae-decoder": 1}
    first = {(s.shape, s.silu): s.count for s in group_norm_shapes("sd15-unet", 512)}
    assert first[((2, 320, 64, 64), True)] == 8 and first[((2, 320, 64, 64), False)] == 5
    vae = {s.shape for s in group_norm_shapes("vae-decoder", 1536)}
    assert {(1, 512, 768, 768), (1, 128, 1536, 1536), (1, 512, 192 * 192, 1)} <= vae  # full res; attention is 3-D


@pytest.mark.parametrize("pixels", [256, 512, 1024, 1536])
def test_every_sd_shape_fills_an_h100_or_is_small(pixels):
    """Every GroupNorm of SD1.5/SDXL UNet + VAE decoder, both layouts, all dtypes: the split path with
    >= 4 programs per SM in each streaming launch, or (below 1024²) a tensor of at most 2^19 elements
    left on the single launch."""
    for model in MODELS:
        for norm in group_norm_shapes(model, pixels):
            for size in set(SIZES.values()):
                for channels_last in (False, True):
                    plan = lp.plan_group_norm(norm.shape, norm.groups, size, channels_last)
                    if plan.path == "split":
                        assert lp.fills(plan) and plan.launches[0].programs >= H100_PROGRAMS
                    else:
                        assert pixels < 1024 and math.prod(norm.shape) <= 2**19, (norm, size, channels_last)

"""Bucketing and data order: sides are multiples within the limits, one shape per batch, order a function of (seed, epoch)."""

from __future__ import annotations

import pytest
import torch

from resadapter_rt.training.data import SizeRules, epoch_batches, load_pixels, scan_dataset
from toy_data import make_dataset


@pytest.mark.parametrize("size,bucket", [
    ((512, 512), (512, 512)),
    ((150, 130), (128, 128)),      # nearest multiple of 64
    ((1000, 600), (1024, 576)),    # 600/64 = 9.4 -> 576; 1000/64 = 15.6 -> 1024
    ((2048, 1024), (1024, 512)),   # longer side scaled to --max-side first
    ((4000, 200), (1024, 128)),    # the shorter side never drops below --min-side
])
def test_buckets(size, bucket):
    assert SizeRules(64, 128, 1024).bucket(*size) == bucket


def test_batches_have_one_shape_and_cover_each_epoch(tmp_path):
    samples = scan_dataset(make_dataset(tmp_path / "d", count=12, captions="txt"), SizeRules(64, 64, 256))
    assert samples[0].caption == "a red square" and len({s.bucket for s in samples}) == 6
    first = epoch_batches(samples, 4, seed=1, epoch=0)
    assert sorted(i for batch in first for i in batch) == list(range(12))
    assert all(len({samples[i].bucket for i in batch}) == 1 for batch in first)
    assert first == epoch_batches(samples, 4, seed=1, epoch=0)
    assert first != epoch_batches(samples, 4, seed=1, epoch=1) and first != epoch_batches(samples, 4, seed=2, epoch=0)


def test_pixels_are_nchw_in_range_and_flipped(tmp_path):
    sample = scan_dataset(make_dataset(tmp_path / "d", count=2), SizeRules(64, 64, 256))[1]  # 128x64 px
    batch = load_pixels([sample, sample], [False, True])
    assert batch.shape == (2, 3, 64, 128) and batch.is_contiguous()  # NCHW, not channels-last strides
    plain, flipped = batch
    assert -1 <= float(plain.min()) and float(plain.max()) <= 1
    assert torch.equal(plain.flip(-1), flipped)

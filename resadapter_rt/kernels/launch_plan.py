"""Launch plans for the GroupNorm kernels and the roofline cost model that chooses between them.

Pure Python (no torch, no Triton), so a test or a benchmark can ask what would be launched on a
GPU without having one.

Two paths:

* ``single``: one program per (sample, group) reads its group twice (statistics, then
  normalise) and writes it once. One launch, but only ``N * groups`` programs (64 at SD's
  usual batch 2 x 32 groups), far too few to keep an H100's 132 SMs streaming.
* ``split``: three launches. ``stats`` programs each reduce a tile column (a chunk of H*W
  positions for a block of channels) to per-channel partial (mean, M2) in fp32; ``finalize``
  merges a group's partials with Chan's parallel formula into (mean, rstd); ``apply``
  normalises, applies the affine and SiLU, one tile per program, fully parallel. Chunks are sized
  so ``stats`` has about ``PROGRAMS_PER_SM`` programs per SM; ``apply`` has one per tile.

``plan_group_norm`` takes the split path where it fills the GPU (at least ``MIN_PROGRAMS_PER_SM``
programs per SM in its stats and apply launches) and its modelled time (``estimate_us``: bytes
moved over HBM bandwidth, scaled down when too few warps are resident to saturate it, plus a fixed
cost per launch) is lower. Small tensors are launch-bound, so they keep the single launch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

H100_SMS = 132
H100_BANDWIDTH = 3.35e12  # bytes/s, H100 SXM HBM3
NUM_WARPS = 4  # every kernel is compiled with Triton's default of 4 warps
WARPS_TO_SATURATE = 16  # resident warps per SM assumed to reach full bandwidth: 4 programs x 4 warps
MIN_PROGRAMS_PER_SM = 4  # the split path is used only where its stats and apply launches reach this
PROGRAMS_PER_SM = 8  # stats-launch target: twice the minimum, while keeping few partials
LAUNCH_US = 2.0  # assumed cost of one more kernel boundary on a stream (launch + ramp-up + drain)
STATS_BYTES = 4  # partial mean and M2, final mean and rstd: fp32 each
SINGLE_BLOCK = 1024  # elements per loop step of the single-launch kernel
FINALIZE_BLOCK = 256  # partials per loop step of the finalize kernel


@dataclass(frozen=True)
class Tile:
    """A [block_hw, block_c] tile of H*W positions x channels (stride 1: H*W in NCHW, channels in channels-last)."""

    block_hw: int
    block_c: int


# 1024 elements (8 per thread of 4 warps): NCHW 128 contiguous H*W positions x 8 channels;
# channels-last 64 positions x 16 contiguous channels (one 32-byte sector per row in fp16).
TILES = {False: Tile(128, 8), True: Tile(64, 16)}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: its 1-D grid and the DRAM bytes it reads and writes."""

    kernel: str
    programs: int
    bytes_read: int
    bytes_written: int
    warps: int = NUM_WARPS  # per program

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written


@dataclass(frozen=True)
class LaunchPlan:
    """What ``launch`` runs for one input: the path, its launches, and the split path's chunking."""

    path: str
    launches: tuple[Launch, ...]
    tile: Tile | None = None
    hw_chunk: int = 0  # H*W positions per stats program (a multiple of tile.block_hw)
    n_chunks: int = 0  # stats programs along H*W per (sample, channel block)

    @property
    def max_programs(self) -> int:
        return max(launch.programs for launch in self.launches)

    @property
    def bytes_moved(self) -> int:
        return sum(launch.bytes_moved for launch in self.launches)


def fill(launch: Launch, sms: int) -> float:
    """Fraction of peak bandwidth a launch reaches: its warps / the warps that saturate ``sms`` SMs, at most 1.

    Optimistic for programs that loop over their data (one tile in flight each): a lower bound on time.
    """
    return min(1.0, launch.programs * launch.warps / (sms * WARPS_TO_SATURATE))


def estimate_us(launches: tuple[Launch, ...], bandwidth: float = H100_BANDWIDTH, sms: int = H100_SMS) -> float:
    """Modelled time: each launch's bytes at its fill of ``bandwidth``, plus ``LAUNCH_US`` per launch."""
    return sum(l.bytes_moved / (bandwidth * fill(l, sms)) * 1e6 + LAUNCH_US for l in launches if l.programs)


def single_plan(n: int, c: int, hw: int, num_groups: int, element_size: int) -> LaunchPlan:
    """One program per (sample, group): statistics pass then normalise pass, both from DRAM."""
    data = n * c * hw * element_size
    return LaunchPlan("single", (Launch("single", n * num_groups, 2 * data + 2 * c * element_size, data),))


def split_plan(n: int, c: int, hw: int, num_groups: int, element_size: int, channels_last: bool,
               sms: int = H100_SMS) -> LaunchPlan:
    """Stats over ~``PROGRAMS_PER_SM * sms`` chunks, finalize per group, apply per tile."""
    tile = TILES[channels_last]
    channel_blocks = math.ceil(c / tile.block_c)
    hw_blocks = math.ceil(hw / tile.block_hw)
    columns = n * channel_blocks  # stats programs per H*W chunk
    blocks_per_chunk = max(1, hw_blocks * columns // (PROGRAMS_PER_SM * sms))
    hw_chunk = blocks_per_chunk * tile.block_hw
    n_chunks = math.ceil(hw / hw_chunk)
    data = n * c * hw * element_size
    partials = 2 * n * n_chunks * c * STATS_BYTES
    stats = 2 * n * num_groups * STATS_BYTES
    launches = (
        Launch("stats", columns * n_chunks, data, partials),
        Launch("finalize", n * num_groups, partials, stats),
        Launch("apply", columns * hw_blocks, data + stats + 2 * c * element_size, data),
    )
    return LaunchPlan("split", launches, tile, hw_chunk, n_chunks)


def plan_group_norm(shape: tuple[int, ...], num_groups: int, element_size: int, channels_last: bool = False,
                    sms: int = H100_SMS, path: str | None = None, bandwidth: float = H100_BANDWIDTH) -> LaunchPlan:
    """The launch plan for an ``[N, C, *spatial]`` input; ``path`` forces "single" or "split".

    By default: split if it fills the GPU (``fills``) and has the lower ``estimate_us`` (``bandwidth``,
    ``sms`` SMs), else single.
    """
    if path not in (None, "single", "split"):
        raise ValueError(f"path must be None, 'single' or 'split', not {path!r}")
    n, c = shape[0], shape[1]
    hw = math.prod(shape[2:])
    single = single_plan(n, c, hw, num_groups, element_size)
    split = split_plan(n, c, hw, num_groups, element_size, channels_last, sms)
    if path is not None:
        return single if path == "single" else split
    faster = estimate_us(split.launches, bandwidth, sms) < estimate_us(single.launches, bandwidth, sms)
    return split if faster and fills(split, sms) else single


def fills(plan: LaunchPlan, sms: int = H100_SMS) -> bool:
    """Whether every launch that streams the tensor has at least ``MIN_PROGRAMS_PER_SM`` programs per SM."""
    return all(l.programs >= MIN_PROGRAMS_PER_SM * sms for l in plan.launches if l.kernel != "finalize")

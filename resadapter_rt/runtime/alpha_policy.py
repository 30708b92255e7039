"""Choosing the ResAdapter alpha for a resolution (``--alpha auto``), following the official practice.

ResAdapter's README: alpha 1.0 for interpolation (below the training size); for extrapolation
0.6-1.0 up to 1.5x the training size and 0.2-0.6 beyond. We take the longer side's ratio r to the
family's training size and interpolate linearly inside those bands: r <= 1 -> 1.0; 1 < r <= 1.5 ->
1.0 down to 0.6; 1.5 < r <= 3 -> 0.6 down to 0.2; beyond 3 -> 0.2.
"""

from __future__ import annotations


def auto_alpha(width: int, height: int, training_size: int) -> float:
    ratio = max(width, height) / training_size
    if ratio <= 1.0:
        return 1.0
    if ratio <= 1.5:
        return round(1.0 - 0.4 * (ratio - 1.0) / 0.5, 4)
    return round(max(0.2, 0.6 - 0.4 * (ratio - 1.5) / 1.5), 4)

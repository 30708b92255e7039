"""Compiled kernels (Triton) with torch fallbacks; importing this package never imports Triton."""

from .group_norm_op import group_norm, triton_available

__all__ = ["group_norm", "triton_available"]

"""Compiled kernels (Triton) with torch fallbacks, used by the runtime's torch backend.

Importing this package never imports Triton. A leaf: it imports only ``errors``, and may be used
by any stage.
"""

from .group_norm_op import group_norm, triton_available

__all__ = ["group_norm", "triton_available"]

"""Kernel tests run the Triton kernels on the CPU: ``TRITON_INTERPRET=1`` must be set before Triton is
first imported (Triton's own library functions are defined for the interpreter or the compiler at
import), so it is set here, before any test module of this package imports Triton. The AOT tests
compile in a subprocess without it."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

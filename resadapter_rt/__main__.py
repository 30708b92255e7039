"""``python -m resadapter_rt ...``: the same CLI as ``resadapter-rt`` (launchers such as torchrun start modules)."""

import sys

from .cli import main

sys.exit(main())

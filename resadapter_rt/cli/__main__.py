"""``python -m resadapter_rt.cli ...``: the same CLI as ``resadapter-rt``."""

import sys

from . import main

sys.exit(main())

"""``python -m proteus``: the ``proteus`` command (what torchrun launches)."""

import sys

from .cli import main

sys.exit(main())

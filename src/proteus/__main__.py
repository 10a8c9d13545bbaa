"""``python -m proteus``: the ``proteus`` command (what torchrun launches)."""

import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # One of torchrun's workers, done: the run is written (rank 0 writes atomically and every
    # rank has passed the closing barrier) and the process group destroyed. A finished rank has
    # still, rarely, aborted in interpreter shutdown (gloo on CPU: "terminate called without an
    # active exception", SIGABRT), which torchrun reports as a failed run; as after a failed
    # collective (cli.main), skip that shutdown and leave with the command's own exit code.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)

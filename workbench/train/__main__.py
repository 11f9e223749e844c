"""``python -m workbench.train CONFIG [--resume] [--out DIR]``: the entry point for torchrun.

    torchrun --standalone --nproc_per_node 8 -m workbench.train data/configs/paper-kd-phasewise.yaml

It runs :mod:`workbench.launch`, the program behind ``workbench train`` (the same flags, the retrieval check as
the evaluation callback, the same one-line errors), without importing the ``workbench`` command line.
"""

import os
import sys

from workbench.launch import main


def _exit(code: int) -> None:
    """Exit a torchrun worker without interpreter finalisation. The run is complete and on disk at this point
    (checkpoints fsynced and renamed, metrics closed, process group destroyed), but gloo's C++ worker threads
    can abort the process while Python tears down (SIGABRT, "terminate called without an active exception";
    seen once in a full CPU test run, see pytorch/pytorch#179291), which torchrun reports as a failed run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit(main(sys.argv[1:]))

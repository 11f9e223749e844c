"""``python -m workbench.train CONFIG [--resume] [--out DIR]``: the entry point for torchrun.

    torchrun --standalone --nproc_per_node 8 -m workbench.train data/configs/paper-kd-phasewise.yaml

It runs the ``workbench train`` command (``workbench.commands.train``, which passes the retrieval check as the
evaluation callback) without the rest of the ``workbench`` command line.
"""

import sys

from workbench.commands.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

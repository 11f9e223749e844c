"""``python -m workbench.train CONFIG [--resume] [--out DIR]``: the entry point for torchrun.

    torchrun --standalone --nproc_per_node 8 -m workbench.train data/configs/paper-kd-phasewise.yaml
"""

import sys

from workbench.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

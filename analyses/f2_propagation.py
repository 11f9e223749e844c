"""F2: RoPE perturbations traced layer by layer into the logits (logit-lens KL by layer, final KL per spec),
and the repeated-token experiment: how much identical copies at different absolute positions differ."""

import sys

from _figure_script import main

if __name__ == "__main__":
    sys.exit(main("f2_propagation", __doc__))

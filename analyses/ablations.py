"""Ablations (`workbench demo --full`): retrieval under band interventions (zero / rotate a frequency band
of q and k at evaluation time) and position-invariant KD targets."""

import sys

from _figure_script import main

if __name__ == "__main__":
    sys.exit(main("ablations", __doc__))

"""F3: per-RoPE-pair W_q updates between the phase-1 and phase-2 checkpoints: layer x pair heatmaps with
wavelength labels and critical-pair overlays, and mean update per frequency band by arm."""

import sys

from _figure_script import main

if __name__ == "__main__":
    sys.exit(main("f3_pair_updates", __doc__))

"""Position probes: held-out R^2 (log position) and bucket accuracy from each layer's residual stream."""

import sys

from _figure_script import main

if __name__ == "__main__":
    sys.exit(main("probes", __doc__))

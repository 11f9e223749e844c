"""The continuous scorecard: loss and KL to the teacher by position on held-out long documents, effective lengths."""

import sys

from _figure_script import main

if __name__ == "__main__":
    sys.exit(main("scorecard", __doc__))

"""F1: retrieval accuracy (and gold-answer log-prob) vs context length by objective x theta schedule, mean ±
std over seeds; the teacher's depth x length grid."""

import sys

from _figure_script import main

if __name__ == "__main__":
    sys.exit(main("f1_retrieval", __doc__))

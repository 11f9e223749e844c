"""One module per ``workbench`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


def run_command(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; the user's errors (bad config, checkpoint, path, value) are one line and exit status 2."""
    # deferred: models imports torch, which `workbench --help` does not need
    from workbench.config import ConfigError
    from workbench.models import CheckpointError

    try:
        return int(run(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"workbench {name}: error: {exc}", file=sys.stderr)
        return 2

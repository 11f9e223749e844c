"""A user's error is one line and exit status 2, never a traceback: the one wrapper every program runs its work
through (the ``workbench`` command line, ``python -m workbench.train``).

A bad config, checkpoint, path or value, a held run lock, and a read-only, full or forbidden output location are
the user's to fix; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_command(name: str, run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command; the user's errors (bad config, checkpoint, path, value) are one line and exit status 2."""
    # deferred: checkpoint_io imports torch, which `workbench --help` does not need
    from workbench.checkpoint_io import CheckpointError
    from workbench.config import ConfigError

    try:
        return int(run(args) or 0)
    except (ConfigError, CheckpointError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"workbench {name}: error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as exc:  # a held run lock; a read-only, full or forbidden output location
        from workbench.runlock import RunLocked
        from workbench.writable import FS_ERRORS, NotWritable, describe

        if isinstance(exc, (RunLocked, NotWritable)):
            print(f"workbench {name}: error: {exc}", file=sys.stderr)
        elif isinstance(exc, OSError) and exc.errno in FS_ERRORS:
            print(f"workbench {name}: error: {exc.filename or '?'}: {describe(exc)}", file=sys.stderr)
        else:
            raise
        return 2

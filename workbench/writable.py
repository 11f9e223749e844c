"""Can this location be written? A write probe before expensive work, and filesystem errors in words.

A command that writes (a run directory, a store, a checkpoint) calls :func:`probe` on its output before it
builds models or evaluates anything: a read-only, full or forbidden location is then one line naming the
path (``NotWritable``), not a traceback after an hour of work. :data:`FS_ERRORS` / :func:`describe` turn
the same errors raised later (the disk fills up mid-run) into one line in ``user_errors.run_command``.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

FS_ERRORS = {
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


class NotWritable(OSError):
    """The output location cannot be written (read-only, full, permission): the message names the path."""


def describe(exc: OSError) -> str:
    """A filesystem error in words (read-only, full, permission), for one-line messages."""
    return FS_ERRORS.get(exc.errno, exc.strerror or str(exc))


def probe(directory: str | Path) -> None:
    """Create ``directory`` and a small file in it, fsynced, then remove both again if they were new (the
    command creates them for real when it writes); NotWritable naming the path otherwise."""
    directory = Path(directory)
    made = [p for p in [directory, *directory.parents] if not p.exists() and not p.is_symlink()]
    test = directory / f".tmp-probe-{uuid.uuid4().hex[:8]}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(test, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            test.unlink(missing_ok=True)
    except OSError as exc:
        raise NotWritable(f"{exc.filename or directory}: cannot write this directory ({describe(exc)})") from None
    finally:
        for p in made:  # innermost first
            try:
                p.rmdir()
            except OSError:
                break

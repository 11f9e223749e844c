"""Confinement of every read to RUNS_DIR.

Every path the app opens is built from a value the browser sent (a dropdown value, a URL query), so each
one goes through :func:`inside`: it is joined to the root, resolved (symlinks and '..' followed) and
refused unless the result is still under the resolved root.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


class OutsideRunsDir(ValueError):
    """A requested path would leave RUNS_DIR (absolute, '..', or a symlink pointing out)."""


def root_of(runs_dir: str | Path) -> Path:
    """The resolved RUNS_DIR; a clear error if it is missing or not a directory."""
    root = Path(runs_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"RUNS_DIR {runs_dir} does not exist")
    if not root.is_dir():
        raise ValueError(f"RUNS_DIR {runs_dir} is not a directory")
    return root.resolve()


def inside(root: Path, relative: str | os.PathLike[str]) -> Path:
    """``root / relative`` resolved, refused with :class:`OutsideRunsDir` unless it stays under ``root``.

    ``relative`` must be a relative path; absolute paths, '..' components, NUL bytes and symlinks that
    resolve outside the root are all refused (the check is on the fully resolved path).
    """
    text = os.fspath(relative)
    if not isinstance(text, str) or not text or "\x00" in text:
        raise OutsideRunsDir(f"refused path {relative!r}: not a relative path under RUNS_DIR")
    pure = PurePosixPath(text.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts:
        raise OutsideRunsDir(f"refused path {text!r}: it leaves RUNS_DIR")
    resolved = (root / pure).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise OutsideRunsDir(f"refused path {text!r}: it resolves outside RUNS_DIR (symlink)")
    return resolved


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (resolved) lies under ``root``."""
    try:
        path = path.resolve()
    except OSError:
        return False
    return path == root or path.is_relative_to(root)

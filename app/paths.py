"""Confinement of every read to RUNS_DIR.

Every path the app opens is built from a value the browser sent (a dropdown value, a URL query), so each
one goes through :func:`inside`: it is joined to the root, resolved (symlinks and '..' followed) and
refused unless the result is still under the resolved root. What the app *finds* by walking RUNS_DIR is
held to the same rule: a file is read only through :func:`read_regular` (inside the root, a regular file,
opened without blocking so a FIFO can never hang a server thread), and a directory handed to zarr or the
checkpoint loader only after :func:`confined_tree` found no symlink leaving the root and no special file
in it.
"""

from __future__ import annotations

import os
import stat
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
    try:
        resolved = (root / pure).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise OutsideRunsDir(
            f"refused path {text!r}: it cannot be resolved ({type(exc).__name__}: a symlink loop?)"
        ) from None
    if resolved != root and not resolved.is_relative_to(root):
        raise OutsideRunsDir(f"refused path {text!r}: it resolves outside RUNS_DIR (symlink)")
    return resolved


def escape(root: Path, path: Path) -> str | None:
    """Why ``path`` is not readable as part of ``root`` ("resolves outside RUNS_DIR (symlink)", "is a symlink
    loop"), or None when it resolves under ``root``. The one test behind every read of what the app finds."""
    try:
        path = path.resolve()
    except (RuntimeError, OSError):  # a symlink loop (RuntimeError before Python 3.13, OSError after)
        return "is a symlink loop"
    return None if path == root or path.is_relative_to(root) else "resolves outside RUNS_DIR (symlink)"


def is_inside(root: Path, path: Path) -> bool:
    """Whether ``path`` (resolved) lies under ``root``."""
    return escape(root, path) is None


class NotRegular(ValueError):
    """A path where a file is expected is a FIFO, socket, device or directory: never opened."""


def read_regular(root: Path, path: Path, *, limit: int | None = None, offset: int = 0) -> bytes:
    """The bytes of ``path`` from ``offset`` (at most ``limit``), only if it resolves inside ``root`` and is
    a regular file. Opened with O_NONBLOCK and checked with fstat on the open descriptor, so a FIFO put in
    place of a file is refused at once instead of blocking the reader."""
    why = escape(root, path)
    if why:
        raise OutsideRunsDir(f"{path.name}: {why}; not read")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(f"{path.name}: not a regular file; not read")
        opened = _opened(fd)  # what was opened, not what the path named a moment before (a link swapped in)
        if opened is not None and opened != root and not opened.is_relative_to(root):
            raise OutsideRunsDir(f"{path.name}: resolved outside RUNS_DIR when opened (symlink swapped); not read")
        with os.fdopen(fd, "rb", closefd=False) as f:
            f.seek(offset)
            return f.read() if limit is None else f.read(limit)
    finally:
        os.close(fd)


def _opened(fd: int) -> Path | None:
    """The real path of an open descriptor (Linux /proc), None where the platform cannot say."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def confined_tree(root: Path, path: Path, *, most: int = 200_000) -> None:
    """Refuse a directory tree (a store group, a checkpoint) holding a symlink that resolves outside
    ``root``, or anything that is neither a directory nor a regular file; symlinked directories inside the
    root are walked too (each real directory once)."""
    if not is_inside(root, path):
        raise OutsideRunsDir(f"{path.name}: resolves outside RUNS_DIR (symlink); skipped")
    seen, visited, todo = 0, set(), [path.resolve()]
    while todo:
        here = todo.pop()
        if here in visited:
            continue
        visited.add(here)
        with os.scandir(here) as entries:
            for entry in entries:
                seen += 1
                if seen > most:
                    raise ValueError(f"{path.name}: more than {most} entries; not opened")
                where = f"{path.name}/.../{entry.name}" if here != path.resolve() else f"{path.name}/{entry.name}"
                why = escape(root, Path(entry.path)) if entry.is_symlink() else None
                if why:
                    raise OutsideRunsDir(
                        f"{where}: a symlink that {why.replace('is a ', 'makes a ')}; skipped"
                        if "loop" in why
                        else f"{where}: a symlink leaving RUNS_DIR; skipped"
                    )
                try:
                    mode = os.stat(entry.path).st_mode
                except OSError:
                    raise NotRegular(f"{where}: a dangling link; skipped") from None
                if stat.S_ISDIR(mode):
                    todo.append(Path(entry.path).resolve())
                elif not stat.S_ISREG(mode):
                    raise NotRegular(f"{where}: not a regular file; skipped")

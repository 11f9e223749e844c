"""One writer per run directory: an advisory lock file with the holder's pid and host.

``run.lock`` in the run directory is held with ``fcntl.flock`` for the whole run by rank 0 (the lock
dies with the process, so a killed trainer never leaves a lock that blocks the next start); its content,
``{"pid": ..., "host": ..., "since": ..., "beat": ...}``, names the holder for the error a second writer gets
and for the dashboard, which calls a run's ``.tmp-*`` directories "in progress" only while a live writer holds
it. A lock file whose holder is dead is taken over with a warning.

``flock`` does not reach across hosts on every shared file system (NFS), so the writer also records a heartbeat
(``beat``, at most every ``BEAT_EVERY`` s while it trains): a lock of another host whose heartbeat is younger
than ``STALE_AFTER`` s counts as held.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import time
import warnings
from pathlib import Path

LOCK = "run.lock"
BEAT_EVERY = 60.0  # seconds between the heartbeats a writer records in run.lock
STALE_AFTER = 600.0  # another host's lock whose heartbeat is older than this belongs to a dead writer
RECORD_BYTES = 512  # run.lock's fixed width: every heartbeat overwrites the whole record in one write


class RunLocked(RuntimeError):
    """Another live process is writing this run directory."""


def holder(run_dir: Path) -> dict | None:
    """What ``run.lock`` says about its holder (pid, host, since), None when absent or unreadable."""
    path = Path(run_dir) / LOCK
    if path.is_symlink():
        return None  # the trainer never writes one: not read (it could point anywhere)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = json.loads(os.read(fd, 4096) or b"null")
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    return data if isinstance(data, dict) else None


def pid_alive(pid: object) -> bool:
    """Whether a process of this host has this pid (a pid of another user's process counts as alive)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writer_alive(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock: flock probed without taking it for long (this host), or
    the recorded pid alive (same host; another host's writer is assumed alive while its lock is younger
    than a day)."""
    path = Path(run_dir) / LOCK
    if path.is_symlink() or not path.is_file():
        return False
    import fcntl  # lazy: POSIX only

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True  # someone holds it exclusively
    except OSError:
        pass
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    info = holder(run_dir) or {}
    return info.get("host") not in (None, socket.gethostname()) and heartbeat_age(info) < STALE_AFTER


def heartbeat_age(info: dict) -> float:
    """Seconds since the holder's last heartbeat (or its start, for a lock of an older workbench)."""
    try:
        return time.time() - float(info.get("beat", info.get("since", 0)) or 0)
    except (TypeError, ValueError):
        return float("inf")


class RunLock:
    """Hold ``run_dir/run.lock`` exclusively until :meth:`release` (or process exit)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None
        self.since = self.beaten = 0.0

    def acquire(self) -> RunLock:
        import fcntl  # lazy: POSIX only

        self.path.parent.mkdir(parents=True, exist_ok=True)
        before = holder(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never through a symlink
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise RunLocked(f"{self.path}: a symlink; the lock is never taken through one (remove it)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunLocked(f"{self.path}: not a regular file; remove it to run here")
        for _attempt in range(10):  # a reader's probe (writer_alive) holds a shared lock for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            os.close(fd)
            who = before or {}
            raise RunLocked(
                f"{self.path.parent}: another trainer is writing this run (pid {who.get('pid', '?')} on "
                f"{who.get('host', '?')} since {_when(who.get('since'))}); wait for it or use another "
                f"--out / name"
            )
        other_host = before and before.get("host") not in (None, socket.gethostname())
        if other_host and heartbeat_age(before) < STALE_AFTER:  # flock may not reach that host (NFS)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise RunLocked(
                f"{self.path.parent}: a trainer on {before.get('host')} (pid {before.get('pid', '?')}) is writing "
                f"this run: its heartbeat is {heartbeat_age(before):.0f} s old; if it is dead, wait until "
                f"{STALE_AFTER:.0f} s have passed or remove {self.path}"
            )
        if before and before.get("pid") != os.getpid():
            warnings.warn(
                f"{self.path}: taking over the lock of pid {before.get('pid')} on {before.get('host')}, "
                f"which is no longer running",
                stacklevel=2,
            )
        self.fd, self.since = fd, time.time()
        os.ftruncate(fd, 0)  # whatever an older writer left
        self._record(self.since)
        os.fsync(fd)
        return self

    def beat(self) -> None:
        """Record that the writer is alive, at most every ``BEAT_EVERY`` s (cheap: call it every step)."""
        now = time.time()
        if self.fd is not None and now - self.beaten >= BEAT_EVERY:
            self._record(now)

    def _record(self, now: float) -> None:
        """One fixed-width write over the last (JSON then spaces): a reader on any host sees a whole record, never
        the empty file a truncate-then-write would show it between heartbeats."""
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": self.since, "beat": now})
        os.pwrite(self.fd, record.encode().ljust(RECORD_BYTES), 0)
        self.beaten = now

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl  # lazy: POSIX only

        try:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _when(since: object) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(since)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "?"

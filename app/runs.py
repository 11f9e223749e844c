"""Data access for run directories under RUNS_DIR: which runs exist, their config, checkpoints and
metrics, and what is wrong with them (missing, half-written, foreign) as a message instead of a traceback.

A run is a directory with ``run.yaml``, ``metrics.jsonl`` or ``ckpt-*`` (RUNS_DIR itself counts when it
is one). ``metrics.jsonl`` is read incrementally: only the bytes appended since the last read are parsed,
so polling a live run stays cheap; a last line without its newline is a record still being written and
is left for the next poll.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.paths import NotRegular, OutsideRunsDir, confined_tree, escape, inside, is_inside, read_regular
from workbench.models import MANIFEST
from workbench.runlock import LOCK, writer_alive

METRICS = "metrics.jsonl"
RUN_YAML = "run.yaml"


def is_run_dir(path: Path) -> bool:
    """A directory the trainer wrote (or is writing)."""
    return path.is_dir() and (
        (path / RUN_YAML).is_file() or (path / METRICS).is_file() or any(p.is_dir() for p in path.glob("ckpt-*"))
    )


MAX_DEPTH = 3  # runs are found up to RUNS_DIR/a/b/<run>


def list_runs(root: Path) -> list[str]:
    """Run directories under RUNS_DIR (relative paths, '.' for RUNS_DIR itself), sorted.

    Walks at most MAX_DEPTH levels without following symlinks and without entering runs, stores
    (``*.zarr``), checkpoints or hidden/temp directories; anything resolving outside RUNS_DIR is skipped.
    """
    if is_run_dir(root):
        return ["."]
    names: list[str] = []
    for dirpath, dirnames, _ in os.walk(root, followlinks=False):
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        keep = []
        for d in sorted(dirnames):
            child = here / d
            if (
                d.startswith(".")
                or d.endswith(".zarr")
                or d.startswith("ckpt-")
                or child.is_symlink()
                or not is_inside(root, child)
            ):
                continue
            if is_run_dir(child):
                names.append(child.relative_to(root).as_posix())
            elif depth + 1 < MAX_DEPTH:
                keep.append(d)
        dirnames[:] = keep
    return sorted(names)


def find_run(root: Path, name: str) -> str | None:
    """The run (relative path) whose directory is called ``name`` (checkpoint labels carry only that)."""
    for rel in list_runs(root):
        if rel == name or rel.rsplit("/", 1)[-1] == name:
            return rel
    return None


@dataclass
class Metrics:
    """What was read from a metrics.jsonl: the records plus the problems worth telling the user."""

    records: list[dict[str, Any]] = field(default_factory=list)
    partial_line: bool = False  # the last line has no newline yet (the trainer is writing it)
    bad_lines: int = 0  # complete lines that are not workbench records (see valid_record)
    offset: int = 0  # bytes consumed (complete lines only)
    identity: tuple[int, int] = (0, 0)  # (device, inode) of the file read
    skipping: bool = False  # inside a line longer than MAX_LINE (counted once, its rest skipped unread)

    def notes(self, name: str) -> list[str]:
        out = []
        if self.partial_line:
            out.append(f"{name}: the last line of {METRICS} is incomplete (still being written); it is skipped")
        if self.bad_lines:
            out.append(
                f"{name}: {self.bad_lines} line(s) of {METRICS} are not workbench records (malformed, "
                f"or longer than {MAX_LINE >> 20} MiB) and were skipped"
            )
        return out


_cache: dict[Path, Metrics] = {}
_lock = threading.Lock()


# keys whose values the views draw or compare as numbers: a record with a non-number there is malformed
NUMERIC = ("loss", "ce", "kd", "lr", "rope_theta", "tokens", "tokens_per_s", "accuracy", "length", "seq_len")
# numbers the views turn into integers or axis positions: NaN or infinity there is malformed too (a NaN
# loss is a diverged step and is drawn as a gap)
FINITE = ("length", "seq_len", "tokens")
# keys the views group and label by: a string (or null) or the record is malformed
TEXT = ("phase", "task")
MAX_LINE = 1 << 20  # bytes; a longer line is no record the trainer writes: skipped (and counted) unread
_BLOCK = 1 << 22  # bytes read per step: memory stays bounded whatever the file holds


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def valid_record(rec: Any) -> bool:
    """A workbench metrics record: a mapping with a string ``kind``, a non-negative integer ``step``,
    numbers (or null) under the numeric keys, finite ones where the views need integers, and strings (or
    null) under the keys the views group by."""
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str):
        return False
    step = rec.get("step", 0)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return False
    return (
        all(rec.get(k) is None or _number(rec[k]) for k in NUMERIC)
        and all(rec.get(k) is None or math.isfinite(rec[k]) for k in FINITE)
        and all(rec.get(k) is None or isinstance(rec[k], str) for k in TEXT)
    )


def _parse(line: bytes) -> dict[str, Any] | None:
    """One complete line as a record, None when it is not one."""
    if len(line) > MAX_LINE:
        return None
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return rec if valid_record(rec) else None


def read_metrics(run_dir: Path, root: Path | None = None) -> Metrics:
    """Records of ``run_dir/metrics.jsonl``, reading only what was appended since the last call.

    Raises FileNotFoundError when the run has no metrics file; OutsideRunsDir / NotRegular when the file is
    a symlink leaving ``root`` (default: the run directory) or not a regular file (a FIFO is never opened).
    Lines that are not records (not JSON, wrong types, longer than MAX_LINE) are skipped and counted; the
    file is read in blocks, so a huge line never sits in memory whole.
    """
    path = run_dir / METRICS
    root = (root or run_dir).resolve()
    why = escape(root, path)
    if why:
        raise OutsideRunsDir(f"{METRICS} {why}; not read")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(f"{METRICS}: not a regular file; not read")
    identity = (st.st_dev, st.st_ino)
    with _lock:
        cached = _cache.get(path)
        if cached is None or cached.identity != identity or st.st_size < cached.offset:
            cached = Metrics(identity=identity)
        if st.st_size == cached.offset:
            return cached
        records, bad, offset, skipping = list(cached.records), cached.bad_lines, cached.offset, cached.skipping
        pending = b""  # the start of a line not yet complete (at most MAX_LINE + 1 bytes kept)
        while offset + len(pending) < st.st_size:
            block = read_regular(
                root, path, offset=offset + len(pending), limit=min(_BLOCK, st.st_size - offset - len(pending))
            )
            if not block:
                break
            data = pending + block
            start = 0
            while True:
                end = data.find(b"\n", start)
                if end < 0:
                    break
                if skipping:  # the rest of an over-long line: already counted
                    skipping = False
                else:
                    line = data[start:end]
                    if line.strip():
                        rec = _parse(line)
                        if rec is None:
                            bad += 1
                        else:
                            records.append(rec)
                start = end + 1
            offset += start
            rest = data[start:]
            if not skipping and len(rest) > MAX_LINE:  # an over-long line: count it, drop what was read of it
                bad += 1
                skipping = True
            if skipping:
                offset += len(rest)
                pending = b""
            else:
                pending = rest
        fresh = Metrics(
            records=records,
            partial_line=bool(pending.strip()) or skipping,
            bad_lines=bad,
            offset=offset,
            identity=identity,
            skipping=skipping,
        )
        _cache[path] = fresh
        return fresh


@dataclass
class RunInfo:
    """A run as the app shows it: config summary, checkpoints, metrics, and messages."""

    name: str
    path: Path
    config: dict[str, Any] | None
    checkpoints: list[str]
    in_progress: list[str]  # .tmp-* directories: saves that have not completed
    metrics: Metrics | None
    messages: list[str]

    @property
    def phases(self) -> list[dict[str, Any]]:
        """Phases of run.yaml (name, steps, seq_len, rope_theta ...), [] when unknown."""
        phases = (self.config or {}).get("phases") or []
        return [p for p in phases if isinstance(p, dict)]

    @property
    def phase_lengths(self) -> list[int]:
        return sorted(
            {
                int(p["seq_len"])
                for p in self.phases
                if _number(p.get("seq_len")) and math.isfinite(p["seq_len"]) and p["seq_len"] > 0
            }
        )


MAX_YAML = 1 << 20  # bytes of run.yaml read at most: a bigger one is refused, not parsed truncated
RECENT_S = 300  # a temporary directory of a run without run.lock counts as a live save this long after its last write


def _last_write(path: Path, most: int = 1000) -> float:
    """Latest modification time of a directory and its direct entries (not following links)."""
    latest = path.lstat().st_mtime
    with os.scandir(path) as entries:
        for i, entry in enumerate(entries):
            if i >= most:
                break
            try:
                latest = max(latest, entry.stat(follow_symlinks=False).st_mtime)
            except OSError:
                continue
    return latest


def saves_in_progress(path: Path, temporary: list[str]) -> list[str]:
    """The ``.tmp-*`` directories of a run that are saves still being written.

    While a live process holds the run's ``run.lock`` (:func:`workbench.runlock.writer_alive`), all of
    them. When ``run.lock`` exists but no live process holds it, none: the writer stopped, and the next
    start of the run removes them. A run without ``run.lock`` (written by a trainer that predates the lock)
    is judged by age: a directory written in the last RECENT_S seconds is taken as a live save, an older one
    as left behind.
    """
    if not temporary:
        return []
    if writer_alive(path):
        return list(temporary)
    if os.path.lexists(path / LOCK):
        return []
    now = time.time()
    out = []
    for name in temporary:
        try:
            if now - _last_write(path / name) < RECENT_S:
                out.append(name)
        except OSError:
            continue
    return out


def checkpoints(root: Path, path: Path, name: str, messages: list[str]) -> list[str]:
    """Complete checkpoints of a run, oldest step first; one whose tree leaves RUNS_DIR or holds a special
    file is skipped with a message before anything in it is opened."""
    found = []
    for ckpt in path.glob("ckpt-*"):
        try:
            confined_tree(root, ckpt)
            manifest = json.loads(read_regular(root, ckpt / MANIFEST, limit=1 << 24))
            found.append((int(manifest.get("step", 0)), ckpt.name))
        except FileNotFoundError:
            continue  # no manifest: incomplete, reported below
        except (OutsideRunsDir, NotRegular) as exc:
            messages.append(f"{name}: checkpoint {exc}")
        except (ValueError, TypeError, AttributeError, OSError, RecursionError):
            messages.append(f"{name}: {ckpt.name}/{MANIFEST} is not a valid manifest; not shown")
    return [n for _, n in sorted(found)]


def run_info(root: Path, name: str) -> RunInfo:
    """Everything the app needs about one run, never raising for a broken run: problems become messages.

    Raises :class:`app.paths.OutsideRunsDir` for a name that leaves RUNS_DIR, FileNotFoundError for a
    run that does not exist.
    """
    path = inside(root, name)
    if not path.is_dir():
        raise FileNotFoundError(f"run {name!r} not found in RUNS_DIR")
    messages: list[str] = []
    if not is_run_dir(path):
        messages.append(f"{name}: not a workbench run (no {RUN_YAML}, {METRICS} or ckpt-* directories)")
    config = None
    if (path / RUN_YAML).exists() or (path / RUN_YAML).is_symlink():  # a link looping or leading nowhere: said
        try:
            text = read_regular(root, path / RUN_YAML, limit=MAX_YAML + 1)
            if len(text) > MAX_YAML:
                raise NotRegular(
                    f"{RUN_YAML} is larger than {MAX_YAML >> 20} MiB (no run.yaml the trainer writes); not read"
                )
            loaded = yaml.safe_load(text)
            if isinstance(loaded, dict):
                config = loaded
            else:
                messages.append(f"{name}: {RUN_YAML} is not a mapping; ignored")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            messages.append(f"{name}: {RUN_YAML} is not valid YAML ({str(exc).splitlines()[0]})")
        except (OutsideRunsDir, NotRegular) as exc:
            messages.append(f"{name}: {exc}")
        except OSError as exc:
            messages.append(f"{name}: cannot read {RUN_YAML} ({exc.strerror})")
    ckpts = checkpoints(root, path, name, messages)
    temporary = sorted(p.name for p in path.glob(".tmp-*") if p.is_dir() and not p.is_symlink())
    in_progress = saves_in_progress(path, temporary)
    incomplete = sorted(p.name for p in path.glob("ckpt-*") if p.is_dir() and not (p / MANIFEST).is_file())
    temporary = [t for t in temporary if t not in in_progress]
    if in_progress:
        messages.append(
            f"{name}: {len(in_progress)} checkpoint save(s) in progress ({', '.join(in_progress)}); not shown"
        )
    if temporary:
        messages.append(
            f"{name}: {', '.join(temporary)} left by a writer that stopped (no live trainer holds the run); "
            f"removed at the run's next start; not shown"
        )
    if incomplete:
        messages.append(f"{name}: {', '.join(incomplete)} without {MANIFEST} (incomplete); not shown")
    metrics = None
    try:
        metrics = read_metrics(path, root)
        messages.extend(metrics.notes(name))
        if not metrics.records:
            messages.append(f"{name}: {METRICS} has no records yet")
    except FileNotFoundError:
        messages.append(f"{name}: no {METRICS} yet (training has not started, or this is not a training run)")
    except (OutsideRunsDir, NotRegular) as exc:
        messages.append(f"{name}: {exc}")
    except OSError as exc:
        messages.append(f"{name}: cannot read {METRICS} ({exc.strerror})")
    return RunInfo(name, path, config, ckpts, in_progress, metrics, messages)


def metrics_mtime(root: Path, names: list[str]) -> float:
    """Latest modification time among the runs' metrics files (0 when none): lets a poll skip redraws."""
    latest = 0.0
    for name in names:
        try:
            latest = max(latest, os.stat(inside(root, name) / METRICS).st_mtime)
        except (OSError, ValueError):
            continue
    return latest

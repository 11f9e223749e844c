"""Data access for run directories under RUNS_DIR: which runs exist, their config, checkpoints and
metrics, and what is wrong with them (missing, half-written, foreign) as a message instead of a traceback.

A run is a :class:`workbench.runs.RunDir` (``run.yaml``, ``metrics.jsonl`` or ``ckpt-*``; RUNS_DIR itself
counts when it is one). What is the app's own: every file is read confined to RUNS_DIR (``app.paths``), and
``metrics.jsonl`` is read incrementally (``workbench.runs.read_metrics``, cached per file): only the bytes
appended since the last poll are parsed, so polling a live run stays cheap.
"""

from __future__ import annotations

import json
import math
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.paths import NotRegular, OutsideRunsDir, confined_tree, escape, inside, is_inside, read_regular
from workbench.checkpoint_io import MANIFEST
from workbench.runlock import LOCK, writer_alive
from workbench.runs import CHECKPOINT_PREFIX, METRICS, RUN_YAML, Metrics, RunDir, is_checkpoint_name, is_number
from workbench.runs import read_metrics as read_records

MAX_DEPTH = 3  # runs are found up to RUNS_DIR/a/b/<run>


def list_runs(root: Path) -> list[str]:
    """Run directories under RUNS_DIR (relative paths, '.' for RUNS_DIR itself), sorted.

    Walks at most MAX_DEPTH levels without following symlinks and without entering runs, stores
    (``*.zarr``), checkpoints or hidden/temp directories; anything resolving outside RUNS_DIR is skipped.
    """
    if RunDir(root).is_run():
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
                or is_checkpoint_name(d)
                or child.is_symlink()
                or not is_inside(root, child)
            ):
                continue
            if RunDir(child).is_run():
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


_cache: dict[Path, Metrics] = {}
_lock = threading.Lock()


def read_metrics(run_dir: Path, root: Path | None = None) -> Metrics:
    """Records of ``run_dir/metrics.jsonl``, reading only what was appended since the last call.

    Raises FileNotFoundError when the run has no metrics file; OutsideRunsDir / NotRegular when the file is
    a symlink leaving ``root`` (default: the run directory) or not a regular file (a FIFO is never opened).
    Lines that are not records are skipped and counted (``workbench.runs.read_metrics``).
    """
    path = run_dir / METRICS
    root = (root or run_dir).resolve()
    why = escape(root, path)
    if why:
        raise OutsideRunsDir(f"{METRICS} {why}; not read")
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(f"{METRICS}: not a regular file; not read")
    with _lock:
        fresh = read_records(
            path, _cache.get(path), read=lambda offset, limit: read_regular(root, path, offset=offset, limit=limit)
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
        return phases_of(self.config)

    @property
    def phase_lengths(self) -> list[int]:
        return phase_lengths_of(self.config)


def phases_of(config: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Phases of a run.yaml (name, steps, seq_len, rope_theta ...), [] when unknown."""
    phases = (config or {}).get("phases") or []
    return [p for p in phases if isinstance(p, dict)] if isinstance(phases, list) else []


def phase_lengths_of(config: dict[str, Any] | None) -> list[int]:
    """The phases' context lengths (``seq_len``) of a run.yaml, sorted, [] when unknown."""
    return sorted(
        {
            int(p["seq_len"])
            for p in phases_of(config)
            if is_number(p.get("seq_len")) and math.isfinite(p["seq_len"]) and p["seq_len"] > 0
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
    for ckpt in path.glob(f"{CHECKPOINT_PREFIX}*"):
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


def run_config(root: Path, name: str, messages: list[str] | None = None) -> dict[str, Any] | None:
    """The run's ``run.yaml`` (confined to RUNS_DIR), None when it has none or it cannot be used; why it
    cannot is appended to ``messages``. Raises OutsideRunsDir for a name that leaves RUNS_DIR."""
    path = inside(root, name) / RUN_YAML
    messages = [] if messages is None else messages
    if not (path.exists() or path.is_symlink()):  # a link looping or leading nowhere: said below
        return None
    try:
        text = read_regular(root, path, limit=MAX_YAML + 1)
        if len(text) > MAX_YAML:
            raise NotRegular(
                f"{RUN_YAML} is larger than {MAX_YAML >> 20} MiB (no run.yaml the trainer writes); not read"
            )
        loaded = yaml.safe_load(text)
        if isinstance(loaded, dict):
            return loaded
        messages.append(f"{name}: {RUN_YAML} is not a mapping; ignored")
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        messages.append(f"{name}: {RUN_YAML} is not valid YAML ({str(exc).splitlines()[0]})")
    except (OutsideRunsDir, NotRegular) as exc:
        messages.append(f"{name}: {exc}")
    except OSError as exc:
        messages.append(f"{name}: cannot read {RUN_YAML} ({exc.strerror})")
    return None


def run_info(root: Path, name: str) -> RunInfo:
    """Everything the app needs about one run, never raising for a broken run: problems become messages.

    Raises :class:`app.paths.OutsideRunsDir` for a name that leaves RUNS_DIR, FileNotFoundError for a
    run that does not exist.
    """
    path = inside(root, name)
    if not path.is_dir():
        raise FileNotFoundError(f"run {name!r} not found in RUNS_DIR")
    messages: list[str] = []
    if not RunDir(path).is_run():
        messages.append(f"{name}: not a workbench run (no {RUN_YAML}, {METRICS} or ckpt-* directories)")
    config = run_config(root, name, messages)
    ckpts = checkpoints(root, path, name, messages)
    temporary = sorted(p.name for p in path.glob(".tmp-*") if p.is_dir() and not p.is_symlink())
    in_progress = saves_in_progress(path, temporary)
    incomplete = RunDir(path).incomplete()
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


def metrics_mtime(root: Path, names: list[str], file: str = METRICS) -> float:
    """Latest modification time among the runs' metrics files (or another ``file`` of theirs; 0 when none):
    lets a poll skip redraws."""
    latest = 0.0
    for name in names:
        try:
            latest = max(latest, os.stat(inside(root, name) / file).st_mtime)
        except (OSError, ValueError):
            continue
    return latest

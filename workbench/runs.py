"""A run directory: what the trainer writes for one run, and what every reader finds there.

    runs/<name>/
        run.yaml        the resolved config (at the start; a --resume rewrites it with new untrained keys)
        metrics.jsonl   one JSON record a line (``kind``: train, eval, error), appended while training
        ckpt-<step>/    checkpoints (``workbench.checkpoint_io``), complete once ``manifest.json`` is written;
                        the manifest's ``phase_end`` marks the last one of each phase
        run.lock        the writer's lock (``workbench.runlock``)
        .tmp-*, .old-*  a save in progress, or what a killed one left

:class:`RunDir` names these paths and reads them: the config, the checkpoints (complete ones, phase ends, the
latest), the metrics records (:func:`read_metrics`: malformed lines skipped and counted, a line still being
written left for the next read). The trainer prepares and writes a run directory (``workbench.train.rundir``,
``metrics``, ``state``); the dashboard reads one confined to RUNS_DIR (``app.runs``).
"""

from __future__ import annotations

import json
import math
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from workbench import checkpoint_io
from workbench.config import RunConfig, load_run_config
from workbench.runlock import LOCK

RUN_YAML = "run.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT_PREFIX = "ckpt-"
CHECKPOINT_NAME = re.compile(rf"{CHECKPOINT_PREFIX}(\d+)")


def checkpoint_name(step: int) -> str:
    """``ckpt-000040``: the directory of the checkpoint saved after ``step`` optimiser steps."""
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def is_checkpoint_name(name: str) -> bool:
    return name.startswith(CHECKPOINT_PREFIX)


def step_of(path: str | Path) -> int | None:
    """The step in a checkpoint directory's name (``ckpt-<step>``), None for any other name."""
    match = CHECKPOINT_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class RunDir:
    """One run directory (it need not exist yet)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunDir | None:
        """The run a checkpoint belongs to: its parent directory when that holds a ``run.yaml``, else None
        (a shipped teacher, a plain HF model)."""
        parent = Path(checkpoint).resolve().parent
        return cls(parent) if (parent / RUN_YAML).is_file() else None

    @property
    def config_path(self) -> Path:
        return self.path / RUN_YAML

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def checkpoint_path(self, step: int) -> Path:
        return self.path / checkpoint_name(step)

    def is_run(self) -> bool:
        """A directory the trainer wrote or is writing: a ``run.yaml``, a ``metrics.jsonl`` or a ``ckpt-*``
        directory."""
        return self.path.is_dir() and (
            self.config_path.is_file()
            or self.metrics_path.is_file()
            or any(p.is_dir() for p in self.path.glob(f"{CHECKPOINT_PREFIX}*"))
        )

    def has_progress(self) -> bool:
        """Training has begun here (a ``ckpt-*`` entry or ``metrics.jsonl``): a new start would overwrite it."""
        return self.path.is_dir() and (any(self.path.glob(f"{CHECKPOINT_PREFIX}*")) or self.metrics_path.exists())

    # ------------------------------------------------------------------------------------- config

    def config(self) -> dict[str, Any]:
        """``run.yaml`` as written (a mapping)."""
        return yaml.safe_load(self.config_path.read_text())

    def run_config(self) -> RunConfig:
        """``run.yaml`` as a validated RunConfig."""
        return load_run_config(self.config_path)

    # -------------------------------------------------------------------------------- checkpoints

    def checkpoint_dirs(self) -> list[Path]:
        """Every ``ckpt-<step>`` directory, complete or not, by the step in its name."""
        found = [(s, p) for p in self.path.glob(f"{CHECKPOINT_PREFIX}*") if (s := step_of(p)) is not None]
        return [p for _, p in sorted(found) if p.is_dir()]

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (``ckpt-*`` with a readable manifest), oldest step (the manifest's) first."""
        found = []
        for p in self.path.glob(f"{CHECKPOINT_PREFIX}*"):
            if (p / checkpoint_io.MANIFEST).is_file():
                try:
                    found.append((int(checkpoint_io.read_manifest(p).get("step", 0)), p.name, p))
                except checkpoint_io.CheckpointError:
                    continue
        return [p for _, _, p in sorted(found)]

    def phase_ends(self) -> list[Path]:
        """The complete checkpoints that end a phase, in phase order (the per-pair analyses compare these)."""
        return [p for p in self.checkpoints() if checkpoint_io.is_phase_end(p)]

    def incomplete(self) -> list[str]:
        """Names of the ``ckpt-*`` directories without a manifest (saves that did not complete), sorted."""
        return sorted(
            p.name
            for p in self.path.glob(f"{CHECKPOINT_PREFIX}*")
            if p.is_dir() and not (p / checkpoint_io.MANIFEST).is_file()
        )

    def latest_checkpoint(self, *, resumable: bool = False) -> Path | None:
        """The newest complete checkpoint whose listed files are all there with their sizes (hashes are checked
        when it is loaded: a corrupt one is an error then, never skipped); ``resumable`` also wants the
        trainer state. None when there is none."""
        for ckpt in reversed(self.checkpoints()):
            try:
                checkpoint_io.verify_checkpoint(ckpt, full_hash=False)
            except checkpoint_io.CheckpointError:
                continue
            if not resumable or (ckpt / checkpoint_io.STATE_DIR / checkpoint_io.STATE_FILE).is_file():
                return ckpt
        return None

    # ------------------------------------------------------------------------------------ metrics

    def metrics(self, previous: Metrics | None = None) -> Metrics:
        """The records of ``metrics.jsonl`` (:func:`read_metrics`; FileNotFoundError without one)."""
        return read_metrics(self.metrics_path, previous)


# ---------------------------------------------------------------------------------- metrics records

# keys whose values the views draw or compare as numbers: a record with a non-number there is malformed
NUMERIC = ("loss", "ce", "kd", "lr", "rope_theta", "tokens", "tokens_per_s", "accuracy", "length", "seq_len")
# numbers the views turn into integers or axis positions: NaN or infinity there is malformed too (a NaN
# loss is a diverged step and is drawn as a gap)
FINITE = ("length", "seq_len", "tokens")
# keys the views group and label by: a string (or null) or the record is malformed
TEXT = ("phase", "task")
MAX_LINE = 1 << 20  # bytes; a longer line is no record the trainer writes: skipped (and counted) unread
_BLOCK = 1 << 22  # bytes read per step: memory stays bounded whatever the file holds


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


def is_number(value: Any) -> bool:
    """An int or float, not a bool (JSON's numbers)."""
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
        all(rec.get(k) is None or is_number(rec[k]) for k in NUMERIC)
        and all(rec.get(k) is None or math.isfinite(rec[k]) for k in FINITE)
        and all(rec.get(k) is None or isinstance(rec[k], str) for k in TEXT)
    )


def parse_record(line: bytes) -> dict[str, Any] | None:
    """One complete line as a record, None when it is not one."""
    if len(line) > MAX_LINE:
        return None
    try:
        rec = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None
    return rec if valid_record(rec) else None


def _read_file(path: Path) -> Callable[[int, int], bytes]:
    def read(offset: int, limit: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(limit)

    return read


def read_metrics(
    path: str | Path, previous: Metrics | None = None, read: Callable[[int, int], bytes] | None = None
) -> Metrics:
    """The records of a ``metrics.jsonl``, parsing only what was appended since ``previous`` (a result of an
    earlier call on the same file; a replaced or shortened file is read again from the start).

    Lines that are not records (not JSON, wrong types, longer than MAX_LINE) are skipped and counted; a last
    line without its newline is a record still being written, left for the next read. The file is read in
    blocks through ``read(offset, limit) -> bytes`` (default: a plain read of ``path``), so a huge line never
    sits in memory whole. FileNotFoundError without the file; OSError for one that is not a regular file.
    """
    path = Path(path)
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{path}: not a regular file; not read")
    read = read or _read_file(path)
    identity = (st.st_dev, st.st_ino)
    if previous is None or previous.identity != identity or st.st_size < previous.offset:
        previous = Metrics(identity=identity)
    if st.st_size == previous.offset:
        return previous
    records, bad, offset, skipping = list(previous.records), previous.bad_lines, previous.offset, previous.skipping
    pending = b""  # the start of a line not yet complete (at most MAX_LINE + 1 bytes kept)
    while offset + len(pending) < st.st_size:
        block = read(offset + len(pending), min(_BLOCK, st.st_size - offset - len(pending)))
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
                    rec = parse_record(line)
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
    return Metrics(
        records=records,
        partial_line=bool(pending.strip()) or skipping,
        bad_lines=bad,
        offset=offset,
        identity=identity,
        skipping=skipping,
    )

"""Offline teacher: top-k log-probs + leftover mass per token, written once, read by the KD loss.

``build(cfg, out, k)`` runs the run config's teacher over exactly the windows the trainer will draw (same
phase seeds, same window numbering: window ``n`` of a phase is the same whatever the batch size or world
size), and stores per KD phase, as ``.npy`` files:

- ``phase-<i>.input_ids.npy``  int32 [windows, seq_len]   (checked against the trainer's batch)
- ``phase-<i>.topk_ids.npy``   int32 [windows, seq_len-1, k]
- ``phase-<i>.topk_logp.npy``  float32 [windows, seq_len-1, k] (log-probs at the loss temperature)

The leftover mass is ``1 - sum(exp(topk_logp))`` and is implied. ``meta.json`` (written last, the whole
directory atomically) records teacher, theta, temperature, k and each phase's seed and data config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench import architectures, attention, checkpoint_io, checkpoints, data, models
from workbench import config as wconfig
from workbench.config import ConfigError, RunConfig
from workbench.train.distill import load_teacher, reset_view
from workbench.train.losses import CachedTeacher, LossSpec
from workbench.train.phases import check_inputs, kd_phases, phase_data, phase_seed, windows_per_step

FORMAT = "workbench-teacher-cache/1"
META = "meta.json"


def _phase_meta(cfg: RunConfig, i: int, windows: int) -> dict[str, Any]:
    ph = cfg.phases[i]
    return {
        "index": i,
        "name": ph.name,
        "seq_len": ph.seq_len,
        "seed": phase_seed(cfg, i),
        "windows": windows,
        "data_hash": wconfig.config_hash(phase_data(cfg, i)),
    }


def check(path: Path, cfg: RunConfig, world_size: int = 1) -> dict[str, Any]:
    """The cache fits this run (vocab, temperature, every KD phase's windows); else one ConfigError."""
    meta_file = path / META
    if not meta_file.is_file():
        raise ConfigError(
            f"teacher.cache: {path} is not a complete teacher cache (no {META}); build it with "
            "`workbench teacher-cache CONFIG --out DIR`"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"teacher.cache: {path}: unknown format {meta.get('format')!r}")
    if meta["vocab_size"] != cfg.model.vocab_size:
        raise ConfigError(
            f"teacher.cache: teacher vocab_size {meta['vocab_size']} differs from the student's "
            f"model.vocab_size {cfg.model.vocab_size}"
        )
    if meta["temperature"] != cfg.loss.temperature:
        raise ConfigError(
            f"teacher.cache: built at temperature {meta['temperature']}, but loss.temperature is "
            f"{cfg.loss.temperature}; rebuild the cache"
        )
    teacher = Path(cfg.teacher.path)
    if meta.get("teacher_hash") and teacher.is_dir() and checkpoint_io.checkpoint_hash(teacher) != meta["teacher_hash"]:
        raise ConfigError(
            f"teacher.cache: built from another teacher (weights hash {meta['teacher_hash']}; "
            f"teacher.path {teacher} has {checkpoint_io.checkpoint_hash(teacher)}); rebuild the cache"
        )
    # the theta the teacher runs at: teacher.rope_theta when set, else its own config.json's
    theta, source = None, ""
    if cfg.teacher.rope_theta is not None:
        theta, source = float(cfg.teacher.rope_theta), "teacher.rope_theta"
    elif teacher.is_dir():
        theta, source = checkpoints.inspect(teacher, verify=False).rope_theta, f"{teacher}/config.json's rope_theta"
    if theta is not None and float(meta["teacher_theta"]) != theta:
        raise ConfigError(
            f"teacher.cache: built with the teacher at theta {meta['teacher_theta']:g}, but "
            f"{source} is {theta:g}; rebuild the cache"
        )
    positions = meta.get("teacher_positions", "same")  # caches from before the key were built on the same view
    if positions != cfg.teacher.positions:
        raise ConfigError(
            f"teacher.cache: built with teacher.positions {positions!r}, but the run sets "
            f"{cfg.teacher.positions!r}; rebuild the cache"
        )
    phases = {p["index"]: p for p in meta["phases"]}
    for i in kd_phases(cfg):
        want = _phase_meta(cfg, i, cfg.phases[i].steps * windows_per_step(cfg, world_size))
        have = phases.get(i)
        if have is None:
            raise ConfigError(f"teacher.cache: no entry for phase {i} ({cfg.phases[i].name}) in {path}")
        for key in ("seq_len", "seed", "data_hash"):
            if have[key] != want[key]:
                raise ConfigError(
                    f"teacher.cache: phase {i} ({cfg.phases[i].name}) was cached with {key} "
                    f"{have[key]!r}, the run uses {want[key]!r}; rebuild the cache"
                )
        if have["windows"] < want["windows"]:
            raise ConfigError(
                f"teacher.cache: phase {i} holds {have['windows']} windows, the run needs "
                f"{want['windows']} (world size {world_size}); rebuild with --world-size"
            )
    return meta


def build(
    cfg: RunConfig,
    out: Path,
    *,
    k: int = 32,
    world_size: int = 1,
    batch_size: int = 8,
    device: str = "cpu",
    progress: bool = True,
) -> Path:
    """Write the teacher cache for ``cfg`` into ``out`` (atomically; refuses an existing ``out``)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; choose another --out (nothing is overwritten)")
    if cfg.teacher is None:
        raise ConfigError("teacher: the config has no teacher section; nothing to cache")
    if not 1 <= k <= cfg.model.vocab_size:
        raise ValueError(f"--top-k must be in [1, vocab_size={cfg.model.vocab_size}], got {k}")
    if not kd_phases(cfg):
        raise ConfigError("phases: no phase has a KD objective; a teacher cache would be unused")
    online = wconfig.from_dict(
        RunConfig, {**wconfig.to_dict(cfg), "teacher": {**wconfig.to_dict(cfg.teacher), "cache": None}}
    )
    check_inputs(online, world_size)
    teacher = load_teacher(cfg, torch.device(device))
    dev = torch.device(device)

    def fill(tmp: Path) -> None:
        phases = [
            _cache_phase(
                cfg, i, teacher, tmp, k=k, world_size=world_size, batch_size=batch_size, device=dev, progress=progress
            )
            for i in kd_phases(cfg)
        ]
        body = {
            "format": FORMAT,
            "teacher": cfg.teacher.path,
            "teacher_hash": checkpoint_io.checkpoint_hash(cfg.teacher.path),
            "teacher_theta": models.rope_theta(teacher),
            "teacher_positions": cfg.teacher.positions,
            "temperature": cfg.loss.temperature,
            "k": k,
            "vocab_size": cfg.model.vocab_size,
            "world_size": world_size,
            "phases": phases,
            "config_hash": wconfig.config_hash(cfg),
        }
        (tmp / META).write_text(json.dumps(body, indent=2))

    return checkpoint_io.atomic_directory(out, fill)


def _cache_phase(
    cfg: RunConfig,
    i: int,
    teacher,
    tmp: Path,
    *,
    k: int,
    world_size: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """Run the teacher over phase ``i``'s windows (the stream the run will read) and write its inputs and
    top-``k`` log-probs as ``.npy`` memmaps into ``tmp``; returns the phase's meta."""
    ph, dcfg = cfg.phases[i], phase_data(cfg, i)
    meta = _phase_meta(cfg, i, ph.steps * windows_per_step(cfg, world_size))
    n, T = meta["windows"], ph.seq_len
    arrays = {
        name: np.lib.format.open_memmap(tmp / f"phase-{i}.{name}.npy", mode="w+", dtype=dt, shape=shape)
        for name, dt, shape in (
            ("input_ids", np.int32, (n, T)),
            ("topk_ids", np.int32, (n, T - 1, k)),
            ("topk_logp", np.float32, (n, T - 1, k)),
        )
    }
    stream = data.make_stream(dcfg, T, batch_size, meta["seed"])
    for start in tqdm(range(0, n, batch_size), desc=f"teacher-cache {ph.name}", disable=not progress):
        b = {key: v.to(device) for key, v in stream.next().items()}
        rows = slice(start, min(start + batch_size, n))
        m = rows.stop - rows.start
        if cfg.teacher.positions == "reset":  # as the online teacher (DistillModule)
            view = reset_view(b["doc_ids"])
        else:
            view = {
                "position_ids": b["position_ids"],
                "attention_mask": attention.attention_mask(b["doc_ids"], dcfg.packing.attention),
            }
        with torch.no_grad(), attention.attention_for(teacher, view["attention_mask"]):
            h = teacher.model(input_ids=b["input_ids"], **view, use_cache=False).last_hidden_state[:m, :-1]
            for j in range(m):  # one window's logits at a time
                logp = torch.log_softmax(
                    architectures.final_logits(teacher.config, teacher.lm_head(h[j]).float()) / cfg.loss.temperature, -1
                )
                vals, ids = logp.topk(k, dim=-1)
                arrays["topk_ids"][rows.start + j] = ids.cpu().numpy()
                arrays["topk_logp"][rows.start + j] = vals.cpu().numpy()
        arrays["input_ids"][rows] = b["input_ids"][:m].cpu().numpy()
    for a in arrays.values():
        a.flush()
    return meta


class TeacherCache:
    """Reads a cache built by ``build``: the cached teacher for a micro-batch of consecutive windows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.meta = json.loads((self.path / META).read_text())
        self._arrays: dict[tuple[int, str], np.ndarray] = {}

    def _array(self, phase: int, name: str) -> np.ndarray:
        key = (phase, name)
        if key not in self._arrays:
            self._arrays[key] = np.load(self.path / f"phase-{phase}.{name}.npy", mmap_mode="r")
        return self._arrays[key]

    def lookup(self, phase: int, first_window: int, input_ids: torch.Tensor, spec: LossSpec) -> CachedTeacher:
        """Top-k targets for windows ``first_window ...`` (aligned with hidden[:, :-1]); checks the tokens match."""
        rows = slice(first_window, first_window + input_ids.shape[0])
        cached_ids = torch.from_numpy(np.array(self._array(phase, "input_ids")[rows])).to(input_ids.device)
        if cached_ids.shape != input_ids.shape or not torch.equal(cached_ids.long(), input_ids):
            raise ConfigError(
                f"teacher.cache: {self.path} phase {phase} windows {rows.start}-{rows.stop - 1} do not "
                "match the training data; rebuild the cache for this config"
            )
        ids = torch.from_numpy(np.array(self._array(phase, "topk_ids")[rows])).to(input_ids.device)
        logp = torch.from_numpy(np.array(self._array(phase, "topk_logp")[rows])).to(input_ids.device)
        return CachedTeacher(ids, logp)

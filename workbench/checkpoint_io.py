"""Checkpoint I/O: save a model atomically, verify a checkpoint (manifest, sha256, hash cache), load it safely.

A workbench checkpoint is a plain Hugging Face directory (``config.json`` + ``model.safetensors``) that
``transformers.AutoModelForCausalLM.from_pretrained`` loads with no project code, plus ``manifest.json``
(provenance and file hashes; written last, so a directory without it is never complete) and optionally
``trainer/`` (optimiser, scheduler, data cursor, RNG) for exact resume.

A plain Hugging Face model directory (no manifest: a teacher, a downloaded model) loads the same way. Without
a manifest there are no hashes to check, so what *can* be checked is checked from the files' own headers
before transformers sees them (:func:`check_plain`); a workbench save that did not finish is refused.
What a command reads about a checkpoint before loading it is :mod:`workbench.checkpoints`; finding the
checkpoints of a run is :mod:`workbench.runs`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

import workbench
from workbench import architectures, rope
from workbench.models import model_inv_freq, rope_theta

MANIFEST = "manifest.json"
FORMAT = "workbench-checkpoint/1"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"  # a sharded plain HF directory's tensor -> shard map
STATE_DIR = "trainer"  # exact-resume state inside a checkpoint (workbench.train.state)
STATE_FILE = "state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, incomplete, corrupt or not a supported model."""


# -------------------------------------------------------------------------------------------- save


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    import transformers  # lazy: importing transformers costs seconds; only provenance needs its version

    return {"torch": torch.__version__, "transformers": transformers.__version__, "workbench": workbench.__version__}


def atomic_directory(final: Path, fill: Callable[[Path], None]) -> Path:
    """Create directory ``final`` atomically: ``fill(tmp)`` writes into a sibling temp dir, every file is
    fsynced, then the temp dir is renamed over ``final``. A crash leaves only a ``.tmp-*`` sibling."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                with open(p, "rb+") as f:
                    os.fsync(f.fileno())
        _fsync_dir(tmp)
        old = None
        if final.exists():
            old = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def discard_directory(path: Path) -> None:
    """Delete a directory so that a kill part-way leaves no half of it under its name: renamed to a ``.old-*``
    sibling first (atomic), then removed (a run's leftovers cleaning removes what a kill left)."""
    path = Path(path)
    gone = path.parent / f".old-{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, gone)
    shutil.rmtree(gone)


def save_checkpoint(
    model,
    path: str | Path,
    manifest: Mapping[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save an HF checkpoint directory atomically, with ``manifest.json`` written last.

    ``manifest`` holds provenance (phase, step, objective, teacher, data, parent, config_hash ...); the
    theta, scaling, library versions and file hashes are filled in here from the model itself. ``extra``
    may write more files (e.g. trainer state) into the temp dir before the manifest. ``state_dict``: the
    model's weights already copied to the CPU (the trainer's full state dict), saved instead of a second copy;
    it is consumed.
    """
    path = Path(path)
    params = dict(model.config.rope_parameters)
    if state_dict is not None and state_dict.keys() != model.state_dict().keys():
        differ = sorted(state_dict.keys() ^ model.state_dict().keys())
        raise ValueError(f"{path}: state_dict does not match the model's keys ({', '.join(differ[:4])} ...)")

    def fill(tmp: Path) -> None:
        source = model.state_dict() if state_dict is None else state_dict
        state = {k: v.detach().to("cpu").contiguous() for k, v in source.items()}  # no copy where already on CPU
        dtypes = sorted({str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()})
        model.save_pretrained(tmp, state_dict=state, safe_serialization=True)  # (it empties ``state``)
        if extra is not None:
            extra(tmp)
        files = {
            p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        }
        body = {
            "format": FORMAT,
            "rope_theta": float(params["rope_theta"]),
            "rope_scaling": {k: v for k, v in params.items() if k != "rope_theta"},
            "created": _dt.datetime.now(_dt.UTC).isoformat(),
            "versions": library_versions(),
            "weights_dtype": ",".join(dtypes),
            **dict(manifest or {}),
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=True, default=str))
        written.update(files)

    written: dict[str, Any] = {}
    final = atomic_directory(path, fill)
    for name, meta in written.items():  # hashed while writing: later loads need not hash them again
        _remember(_verdict_path(final / name, meta["sha256"]), final / name, meta["sha256"])
    return final


# ----------------------------------------------------------------------------- manifest and hashes


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no {MANIFEST}; not a complete workbench checkpoint "
            "(a save that did not finish, or a plain Hugging Face directory)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}/{MANIFEST}: corrupt JSON ({exc})") from None


def is_phase_end(path: str | Path) -> bool:
    """Whether a checkpoint's manifest marks it as the last of its phase (a plain HF directory never is)."""
    return (Path(path) / MANIFEST).is_file() and bool(read_manifest(path).get("phase_end"))


# Integrity verdicts: hashing a 2.2 GB safetensors file takes about 1.6 s from the page cache (1.35 GB/s measured
# here; 2 ms for the 2.5 MB tiny teacher), more from a cold disk, and every command loads checkpoints again and
# again. So a file whose sha256 matched its manifest is remembered in a user cache directory (never inside the
# checkpoint or the repository: data/ may be read-only), keyed by its resolved path, size, mtime, ctime, inode
# and the manifest's hash; any write to the file changes mtime/ctime, so it is hashed again.
CACHE_ENV = "WORKBENCH_CACHE_DIR"
CACHE_NAME = "rope-kd-workbench"


def cache_dir() -> Path:
    """$WORKBENCH_CACHE_DIR, else $XDG_CACHE_HOME/rope-kd-workbench, else ~/.cache/rope-kd-workbench."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / CACHE_NAME


def _verdict_path(f: Path, sha256: str | None) -> Path:
    """Where the verdict on ``f`` (as it is now: path, size, mtime, ctime, inode) is kept: that it matched
    ``sha256`` (``verified/``), or, for ``sha256=None``, what it hashed to (``sha256/``, no manifest to match)."""
    st = f.stat()
    key = json.dumps([str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, sha256])
    kind = "verified" if sha256 is not None else "sha256"
    return cache_dir() / kind / f"{hashlib.sha256(key.encode()).hexdigest()}.json"


def _remember(target: Path, f: Path, sha256: str) -> None:
    """Record in ``target`` that ``f`` hashed to ``sha256`` (best effort: an unwritable cache only costs a re-hash)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"path": str(f.resolve()), "sha256": sha256}))
        os.replace(tmp, target)
    except OSError:
        pass


@contextlib.contextmanager
def _hashing(verdict: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``verdict``'s lock file while a file is hashed, so processes that need
    the same verdict at once (every rank of a torchrun job loading one fresh checkpoint) hash it once: the
    others wait, then read the verdict. Best effort: without a writable cache (or flock) nothing is held."""
    try:
        import fcntl  # lazy: POSIX only; without it every process hashes for itself

        verdict.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(verdict.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _recorded_sha256(verdict: Path) -> str | None:
    try:
        return json.loads(verdict.read_text())["sha256"]
    except (OSError, ValueError, KeyError):
        return None


def file_sha256(f: Path) -> str:
    """sha256 of a file without a manifest (a plain HF shard), hashed once per (path, size, mtime, ...)."""
    verdict = _verdict_path(f, None)
    if (known := _recorded_sha256(verdict)) is not None:
        return known
    with _hashing(verdict):
        if (known := _recorded_sha256(verdict)) is not None:  # hashed by another process while we waited
            return known
        digest = _sha256(f)
        _remember(verdict, f, digest)
    return digest


def verify_file(f: Path, sha256: str) -> None:
    """Check a file's sha256 against the manifest's, once per (path, size, mtime, ...): CheckpointError if not."""
    f = Path(f)
    verdict = _verdict_path(f, sha256)
    if verdict.is_file():
        return
    with _hashing(verdict):
        if verdict.is_file():  # verified by another process while we waited
            return
        actual = _sha256(f)
        if actual != sha256:
            raise CheckpointError(
                f"{f}: sha256 {actual[:16]}... does not match the manifest's {sha256[:16]}...: the "
                "file is corrupt or was changed after it was saved; refusing to load it (copy it "
                "again or re-save the checkpoint)"
            )
        _remember(verdict, f, sha256)


def verify_checkpoint(path: str | Path, *, full_hash: bool = True, state: bool = False) -> dict[str, Any]:
    """Check a checkpoint directory is complete and intact; returns its manifest. Raises CheckpointError.

    Sizes of every file the manifest lists are always checked. ``full_hash`` (the default) also checks the
    sha256 of the files a load reads (weights, configs, tokenizer); ``state=True`` adds the trainer state
    (``trainer/``), which only ``--resume`` reads. Verdicts are cached (see ``cache_dir``).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    manifest = read_manifest(path)
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}/{MANIFEST}: unknown format {manifest.get('format')!r}, expected {FORMAT!r}")
    files = manifest.get("files", {})
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: file {name} listed in the manifest is missing")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(
                f"{f}: size {f.stat().st_size} bytes, manifest says {meta['bytes']} (truncated or replaced)"
            )
    if full_hash:
        for name, meta in files.items():
            if state or not name.startswith(f"{STATE_DIR}/"):
                verify_file(path / name, meta["sha256"])
    return manifest


# ------------------------------------------------------------------------- plain HF directories


def shard_tensors(shard: Path) -> set[str]:
    """Tensor names of one safetensors file, after checking its header and length against each other."""
    size = shard.stat().st_size
    try:
        with open(shard, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ValueError("shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            if n > size - 8 or n > 100 << 20:
                raise ValueError(f"header length {n} beyond the file's {size} bytes")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"{shard}: corrupt or truncated safetensors file ({exc}); copy or download it again"
        ) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{shard}: corrupt or truncated safetensors file (header is not a JSON object)")
    end = 0
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(meta["data_offsets"][1]))
        except (KeyError, TypeError, IndexError, ValueError):
            raise CheckpointError(
                f"{shard}: corrupt or truncated safetensors file (tensor {name} has no data_offsets)"
            ) from None
    expected = 8 + n + end
    if size != expected:
        raise CheckpointError(
            f"{shard}: {size} bytes but its header describes {expected} (truncated or still "
            "being written); copy or download it again"
        )
    return {k for k in header if k != "__metadata__"}


def check_plain(path: str | Path) -> None:
    """Refuse (CheckpointError, one line) a plain HF directory whose weights are incomplete or damaged, from the
    files' own headers (no tensor data is read):

    - ``model.safetensors.index.json``, when present, parses, and every shard it names exists and holds the
      tensors the index puts in it;
    - every shard's header parses and the file is exactly as long as the header says (8-byte length + header +
      the end of the last tensor's data): a truncated copy or an interrupted download is refused;
    - a directory the workbench was writing (a ``.tmp-*`` save directory, or one with ``trainer/`` state but no
      ``manifest.json``) is a save that did not finish, not a plain HF directory: refused.
    """
    path = Path(path)
    if path.name.startswith(".tmp-") or (path / STATE_DIR).is_dir():
        raise CheckpointError(
            f"{path}: a workbench save that did not finish (no manifest.json, which is written "
            "last); use a complete checkpoint (workbench lists them with ckpt-*/manifest.json) "
            "or re-save it"
        )
    index = path / INDEX
    shards = sorted(path.glob("*.safetensors"))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            assert isinstance(weight_map, dict)
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
            raise CheckpointError(f"{index}: corrupt index (no weight_map); copy or download it again") from None
        wanted: dict[str, set[str]] = {}
        for tensor, shard in weight_map.items():
            wanted.setdefault(str(shard), set()).add(tensor)
        for shard, tensors in sorted(wanted.items()):
            f = path / shard
            if not f.is_file():
                raise CheckpointError(
                    f"{path}: shard {shard} named in {INDEX} is missing (an incomplete copy or download)"
                )
            missing = tensors - shard_tensors(f)
            if missing:
                raise CheckpointError(
                    f"{f}: lacks {len(missing)} tensor(s) {INDEX} puts there "
                    f"(e.g. {sorted(missing)[0]}); copy or download it again"
                )
        return
    if not shards:
        raise CheckpointError(f"{path}: no *.safetensors weights")
    for shard in shards:
        shard_tensors(shard)


# -------------------------------------------------------------------------------------------- read


def read_config(path: str | Path, *, weights: bool = True, architecture: bool = True) -> dict[str, Any]:
    """``config.json`` of a model directory after the checks a load needs (CheckpointError otherwise): it
    parses, names a supported architecture (``architecture``), and every ``*.safetensors`` file opens with
    its last tensor readable (``weights``). What a command reads about a checkpoint before loading it is
    :func:`workbench.checkpoints.inspect`, built on this."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{path}: no config.json; not a Hugging Face model directory")
    try:
        cfg = json.loads(cfg_file.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: corrupt JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file}: expected a JSON object, got {type(cfg).__name__}")
    if architecture:
        try:
            architectures.of(cfg)
        except architectures.ArchitectureError as exc:
            raise CheckpointError(f"{cfg_file}: {exc}") from None
    if not weights:
        return cfg
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path}: no *.safetensors weights")
    for shard in shards:
        try:
            with safe_open(str(shard), framework="pt") as f:
                names = list(f.keys())
                if names:  # touch the last tensor so truncation is caught before transformers sees it
                    f.get_slice(names[-1])
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"{shard}: corrupt or truncated safetensors file ({exc})") from None
    return cfg


def checkpoint_hash(path: str | Path) -> str:
    """A short content hash of a checkpoint's weights (from the manifest when there is one; a plain HF
    directory's shards are hashed once and remembered, see ``cache_dir``)."""
    path = Path(path)
    try:
        files = read_manifest(path).get("files", {})
        digest = "".join(meta["sha256"] for name, meta in sorted(files.items()) if name.endswith(".safetensors"))
        if digest:
            return hashlib.sha256(digest.encode()).hexdigest()[:16]
    except CheckpointError:
        pass
    h = hashlib.sha256()
    for shard in sorted(path.glob("*.safetensors")):
        h.update(file_sha256(shard).encode())
    return h.hexdigest()[:16]


def verify(path: str | Path, *, full_hash: bool = True) -> dict[str, Any]:
    """The manifest of a workbench checkpoint after :func:`verify_checkpoint`, or ``{}`` for a plain HF
    directory after :func:`check_plain` (integrity from its safetensors headers / index). CheckpointError
    for a missing directory, a save that did not finish, or damaged files."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if (path / MANIFEST).exists():
        return verify_checkpoint(path, full_hash=full_hash)
    check_plain(path)
    return {}


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    full_hash: bool = True,
):
    """Load a workbench checkpoint or a plain HF model directory -> (model, manifest; ``{}`` for a plain
    directory). The model runs with the theta in ``config.json``.

    Refuses, with one clear CheckpointError, a missing directory, a save that did not complete, a file
    whose size or sha256 disagrees with the manifest (hashed once, then cached: ``verify_checkpoint``), a
    plain directory whose safetensors headers / index do not match its files (``check_plain``), a damaged
    safetensors file, or an unsupported architecture.
    """
    path = Path(path)
    manifest = verify(path, full_hash=full_hash)
    arch = architectures.of(read_config(path))
    try:
        model = arch.model_class().from_pretrained(
            path, dtype=dtype, local_files_only=True, attn_implementation=arch.attn_implementation(attn_implementation)
        )
    except Exception as exc:
        raise CheckpointError(f"{path}: transformers could not load it ({type(exc).__name__}: {exc})") from None
    model.to(device).eval()
    theta = rope_theta(model)
    if manifest and not math.isclose(manifest["rope_theta"], theta, rel_tol=1e-9):
        raise CheckpointError(
            f"{path}: config.json theta {theta} disagrees with manifest theta {manifest['rope_theta']}"
        )
    expected = torch.as_tensor(
        rope.inv_freq(
            theta,
            architectures.head_dim(model.config),
            _scaling_of(model.config.rope_parameters),
            max_position_embeddings=model.config.max_position_embeddings,
        ),
        dtype=torch.float32,
    )
    if not torch.allclose(model_inv_freq(model).float().cpu(), expected, rtol=1e-5):
        raise CheckpointError(f"{path}: the rotary frequencies the model runs with do not match theta {theta}")
    return model, manifest


def _scaling_of(params: Mapping[str, Any]) -> dict[str, Any] | None:
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return scaling if scaling.get("rope_type", "default") != "default" else None

"""Llama models and checkpoints: build from a config, change theta for real, save atomically, load safely.

A workbench checkpoint is a plain Hugging Face directory (``config.json`` + ``model.safetensors``) that
``transformers.AutoModelForCausalLM.from_pretrained`` loads with no project code, plus ``manifest.json``
(provenance; written last, so a directory without it is never complete) and optionally ``trainer/``
(optimiser, scheduler, data cursor, RNG) for exact resume.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

import workbench
from workbench import architectures, hfdir, rope
from workbench.config import ModelConfig
from workbench.hfdir import CheckpointError  # the public name; defined in hfdir, which models builds on

MANIFEST = "manifest.json"
FORMAT = "workbench-checkpoint/1"
WEIGHTS = "model.safetensors"


# ------------------------------------------------------------------------------------------- build


def hf_config(cfg: ModelConfig, attn_implementation: str = "sdpa"):
    """transformers' config of ``cfg.architecture`` (LlamaConfig by default; theta lives in ``rope_parameters``)."""
    return architectures.hf_config(cfg, attn_implementation)


def build_model(
    cfg: ModelConfig,
    *,
    seed: int | None = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
):
    """A freshly initialised model of ``cfg.architecture`` (``LlamaForCausalLM`` by default; seeded)."""
    config = hf_config(cfg, attn_implementation)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        model = architectures.get(cfg.architecture).model_class()(config)
    return model.to(dtype=dtype).eval()


def count_parameters(cfg: ModelConfig) -> int:
    """Parameter count of a ModelConfig, computed on the meta device (no memory)."""
    model = build_model(cfg, seed=None, device="meta")
    return sum(p.numel() for p in model.parameters())


def model_config_of(model) -> ModelConfig:
    """The ModelConfig that describes a loaded HF model of a supported architecture."""
    c = model.config
    arch = architectures.of(c)
    params = dict(c.rope_parameters or {})
    params.pop("partial_rotary_factor", None)  # Phi-3 states 1.0 (architectures.check refuses anything else)
    theta = float(params.pop("rope_theta", 10000.0))
    scaling = params if params.get("rope_type", "default") != "default" else None
    return ModelConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        num_layers=c.num_hidden_layers,
        num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads,
        intermediate_size=c.intermediate_size,
        max_position_embeddings=c.max_position_embeddings,
        rope_theta=theta,
        rope_scaling=scaling,
        head_dim=getattr(c, "head_dim", None),
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=bool(c.tie_word_embeddings),
        architecture=arch.name,
    )


# -------------------------------------------------------------------------------------------- RoPE


def rotary_modules(model) -> list[torch.nn.Module]:
    """Every rotary-embedding module of a model (Llama has one shared ``model.model.rotary_emb``)."""
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


def rope_theta(model) -> float:
    """The theta a model's config says it runs with."""
    return float(model.config.rope_parameters["rope_theta"])


def set_rope_theta(model, theta: float, scaling: Mapping[str, Any] | None = None) -> None:
    """Change the RoPE base (and scaling) a model really runs with, in place.

    transformers computes ``inv_freq`` once at init into non-persistent buffers, so editing the config is
    not enough: this updates ``config.rope_parameters`` and copies freshly computed frequencies into the
    existing rotary buffers (keeping any hooks attached to the module).
    """
    if not theta > 0:
        raise ValueError(f"rope theta must be > 0, got {theta}")
    params: dict[str, Any] = {"rope_type": "default"}
    if scaling:
        params.update(dict(scaling))
    params["rope_theta"] = float(theta)
    params.update(architectures.intrinsic_rope_parameters(model.config))  # e.g. Phi-3's partial_rotary_factor
    model.config.rope_parameters = params
    modules = rotary_modules(model)
    if not modules:
        raise ValueError("model has no rotary embedding module to update")
    for module in modules:
        fresh = type(module)(config=model.config)  # transformers' own frequency init (this architecture's class)
        with torch.no_grad():
            module.inv_freq.copy_(fresh.inv_freq.to(module.inv_freq.device))
            module.original_inv_freq.copy_(fresh.original_inv_freq.to(module.original_inv_freq.device))
        module.attention_scaling = fresh.attention_scaling
        module.rope_type = fresh.rope_type
        module.config = model.config
        module.max_seq_len_cached = fresh.max_seq_len_cached
        module.original_max_seq_len = fresh.original_max_seq_len


def model_inv_freq(model) -> torch.Tensor:
    """The frequencies the model's rotary module actually uses (not what the config claims)."""
    return rotary_modules(model)[0].inv_freq.detach().clone()


def interleaved_to_half_split(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Permute q/k projection rows from the interleaved RoPE layout (pair j = dims 2j, 2j+1; Meta/GPT-J
    style) to HF's half-split layout (pair j = dims j, j + d/2). ``weight`` is [num_heads*head_dim, in]."""
    if weight.shape[0] != num_heads * head_dim:
        raise ValueError(f"weight has {weight.shape[0]} rows, expected num_heads*head_dim = {num_heads * head_dim}")
    w = weight.reshape(num_heads, head_dim // 2, 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)


def half_split_to_interleaved(weight: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half_split`."""
    w = weight.reshape(num_heads, 2, head_dim // 2, *weight.shape[1:])
    return w.transpose(1, 2).reshape(weight.shape)


def import_interleaved_state_dict(state: Mapping[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """An HF-named Llama state dict whose q/k rows are interleaved -> the half-split layout HF expects."""
    out = dict(state)
    d = cfg.resolved_head_dim
    for name, tensor in state.items():
        if name.endswith("self_attn.q_proj.weight"):
            out[name] = interleaved_to_half_split(tensor, cfg.num_heads, d)
        elif name.endswith("self_attn.k_proj.weight"):
            out[name] = interleaved_to_half_split(tensor, cfg.num_kv_heads, d)
    return out


# -------------------------------------------------------------------------------------- checkpoints


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


def save_checkpoint(
    model, path: str | Path, manifest: Mapping[str, Any] | None = None, extra: Callable[[Path], None] | None = None
) -> Path:
    """Save an HF checkpoint directory atomically, with ``manifest.json`` written last.

    ``manifest`` holds provenance (phase, step, objective, teacher, data, parent, config_hash ...); the
    theta, scaling, library versions and file hashes are filled in here from the model itself. ``extra``
    may write more files (e.g. trainer state) into the temp dir before the manifest.
    """
    path = Path(path)
    params = dict(model.config.rope_parameters)

    def fill(tmp: Path) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
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


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        return json.loads((path / MANIFEST).read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: no {MANIFEST}; not a complete workbench checkpoint "
            "(a save that did not finish, or a plain HF directory: use allow_plain_hf=True)"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}/{MANIFEST}: corrupt JSON ({exc})") from None


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
            if state or not name.startswith("trainer/"):
                verify_file(path / name, meta["sha256"])
    return manifest


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
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: corrupt JSON ({exc})") from None
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


def pick_device(name: str) -> torch.device:
    """``auto`` (this rank's CUDA device when there is one, else CPU), ``cpu``, ``cuda`` (this rank's),
    ``cuda:N`` -> a torch.device; anything else, or CUDA on a machine without it, is one clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {name!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} requested but no CUDA device is available")
    if device.type == "cuda" and device.index is None:  # bare "cuda": this rank's device (set_device needs an index)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def load(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    allow_plain_hf: bool = False,
    full_hash: bool = True,
):
    """Load a checkpoint -> (model, manifest). The model runs with the theta in ``config.json``.

    Refuses, with one clear CheckpointError, a missing directory, a save that did not complete, a file
    whose size or sha256 disagrees with the manifest (hashed once, then cached: ``verify_checkpoint``), a damaged
    safetensors file, or a non-Llama model.
    ``allow_plain_hf=True`` accepts any local HF Llama directory (manifest = {}).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    if (path / MANIFEST).exists() or not allow_plain_hf:
        manifest = verify_checkpoint(path, full_hash=full_hash)
    else:
        manifest = {}
        hfdir.check_plain(path)  # plain HF directory: integrity from its safetensors headers / index
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


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (``ckpt-*`` with a manifest) of a run directory, oldest step first."""
    run_dir = Path(run_dir)
    found = []
    for p in run_dir.glob("ckpt-*"):
        if (p / MANIFEST).is_file():
            try:
                found.append((int(read_manifest(p).get("step", 0)), p.name, p))
            except CheckpointError:
                continue
    return [p for _, _, p in sorted(found)]

"""The cross-document KD signal: the part of a model's next-token distribution that depends on content
outside the current packed document.

Students are trained on short documents packed into a long window. For every token of such a window the
teacher's KD target is ``p_full``: its distribution with causal attention across the whole window. The
same teacher with *document-masked* attention (same tokens, same ``position_ids``, a token sees only its
own document) gives ``p_doc``. Per token t (the distribution computed at t, predicting token t+1)::

    kl[t] = KL(p_full(. | window[<= t]) || p_doc(. | document(t)[<= t]))     (nats)

is the information in the KD target that comes from other documents: what CE on short documents cannot
see and KD can. Tokens of the first document of a window have nothing before them, so their KL is 0 up
to float rounding; a window holding one document gives all zeros.

Per token the Dataset keeps (``keep_tokens``) the KL with coords ``token_window``, ``token_position``
(t in the window), ``token_position_id``, ``token_doc`` (document index in the window), ``token_distance``
(t minus its document's first index: how many earlier tokens of its own document the masked pass sees;
0 = the document's first token, which sees only itself), ``token_kind`` (class of the *predicted* token
t+1: marker, key, value, digit, filler, special for the synthetic vocabulary; ``token`` for any other
tokenizer), ``token_id`` (the predicted id), ``kd_target`` (labels[t+1] != -100: the KD loss uses this
target) and ``boundary`` (t+1 starts the next document). The last token of a window predicts nothing
and is left out.

Summaries (over the ``kd_target`` tokens by default, ``summary_tokens="all"`` for every token): overall
``mean``, ``median``, ``p95``, ``top5_share`` (share of all KL mass carried by the top 5 % tokens) and
``mean_after_first_doc``; by distance to the document start (log-spaced buckets 0, 1, 2-3, 4-7, ... up
to the longest document) and by kind of the predicted token: ``mean_*``, ``median_*``, ``p95_*``,
``share_*`` (share of the KL mass), token counts in ``n_by_distance`` / ``n_by_kind``.

Memory: per batch both hidden-state passes, then the unembedding in token chunks, so at most one
``[chunk x vocab]`` pair of log-probs exists at a time; only per-token floats are kept. The document
mask is ``[batch, 1, seq, seq]`` (``workbench.data.attention_mask``): fine for CPU windows and a few
thousand tokens on a GPU, not for 128k windows.

Python API::

    from workbench.measurements import cross_document_kl, cross_document_kl_checkpoints, write_kd_signal
    dcfg = load_data_config("data/configs/tiny-kd-phasewise.yaml")
    ds = cross_document_kl("data/teacher/tiny-teacher", dcfg, seq_len=1024, n_windows=8)
    write_kd_signal("results.zarr", ds)                   # group kd_signal, appended along checkpoint
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from workbench import checkpoint_io, checkpoints, divergence, models, tokenizers
from workbench import config as wconfig
from workbench import store as wstore  # the module; `store` is a store path
from workbench.attention import attention_for, attention_mask
from workbench.config import ConfigError, DataConfig
from workbench.data import corpus, make_stream, text
from workbench.data import stream as wstream
from workbench.data.packing import document_starts
from workbench.data.tokenizer import VOCAB, VOCAB_SIZE

SYNTHETIC_KINDS = ("marker", "key", "value", "digit", "filler", "special")
OTHER_KINDS = ("token",)
DIVERGENCE = "KL(p_full || p_doc): causal attention across the window vs document-masked, same position_ids"
AUTO_KEEP_TOKENS = 1 << 21  # per-token values are kept up to this many tokens per checkpoint


# ------------------------------------------------------------------------------------------ inputs


def load_data_config(path: str | Path, phase: str | None = None) -> DataConfig:
    """The data config of a YAML file: a run config's ``data`` section (or ``phase``'s data, which falls
    back to the run's), a file with only a ``data:`` section, or a bare data section (``kind: ...``).

    Raises ConfigError naming the file for a config without data, an unknown phase, or a bad value.
    """
    path = Path(path)
    raw = wconfig.read_yaml(path)
    if "phases" in raw or "name" in raw:
        cfg = wconfig.load_run_config(path)
        if phase is not None:
            names = [ph.name for ph in cfg.phases]
            if phase not in names:
                raise ConfigError(
                    f"{path}: --phase {phase!r} is not a phase of this config (phases: {', '.join(names)})"
                )
            ph = cfg.phases[names.index(phase)]
            if ph.data is None and "data" not in raw:
                raise ConfigError(
                    f"{path}: phase {phase!r} has no data section and the config has no top-level 'data' section"
                )
            return ph.data or cfg.data
        if "data" not in raw:
            with_data = [ph.name for ph in cfg.phases if ph.data is not None]
            hint = f"; pick a phase's data with --phase ({', '.join(with_data)})" if with_data else ""
            raise ConfigError(f"{path}: data: the config has no top-level 'data' section{hint}")
        return cfg.data
    if phase is not None:
        raise ConfigError(f"{path}: --phase {phase!r} given, but this is not a run config with phases")
    fields = {f.name for f in DataConfig.__dataclass_fields__.values()}
    if "data" in raw and set(raw) <= {"data", "description"}:
        if not isinstance(raw["data"], Mapping):
            raise ConfigError(f"{path}: data: expected a mapping, got {type(raw['data']).__name__}")
        return wconfig.from_dict(DataConfig, raw["data"], f"{path}: data")
    if "kind" in raw and set(raw) <= fields:
        return wconfig.from_dict(DataConfig, raw, str(path))
    raise ConfigError(
        f"{path}: data: missing: not a run config with a data section, nor a data section "
        f"(top-level keys: {', '.join(sorted(raw)) or 'none'})"
    )


def _token_kinds(data_cfg: DataConfig) -> bool:
    """True when the data speaks the synthetic vocabulary (so its token classes apply)."""
    return corpus.data_tokenizer(data_cfg) is None


def check_inputs(
    paths: Sequence[str | Path], data_cfg: DataConfig, *, seq_len: int, n_windows: int, batch_size: int = 1
) -> None:
    """Every input error before any model runs (one ValueError / CheckpointError / ConfigError): data config,
    window sizes, each checkpoint's directory, window length and vocabulary against the data's."""
    if not paths:
        raise ValueError("no checkpoint given")
    if n_windows < 1 or batch_size < 1:
        raise ValueError(f"windows and batch size must be >= 1, got {n_windows} and {batch_size}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one token and the one it predicts), got {seq_len}")
    wstream.check(data_cfg, seq_len, batch_size)
    data_tok = text.load_tokenizer(corpus.data_tokenizer(data_cfg))
    data_vocab = len(data_tok)
    synthetic = _token_kinds(data_cfg)
    labels: dict[str, Path] = {}
    for p in map(Path, paths):
        info = checkpoints.inspect(p)
        cfg, label = info.config, info.label
        if label in labels:
            raise ValueError(f"{p}: checkpoint label {label!r} given twice ({labels[label]})")
        labels[label] = p
        vocab = int(cfg.get("vocab_size") or 0)
        if vocab < data_vocab:
            raise ValueError(
                f"{p}: model vocab_size {vocab} is smaller than the data's vocabulary ({data_vocab} "
                f"tokens, {'the synthetic tokenizer' if synthetic else corpus.data_tokenizer(data_cfg)}); "
                "the model and the data must share one vocabulary"
            )
        if tokenizers.has_tokenizer(p):
            own = tokenizers.load(p, f"{p} (its tokenizer files)")
            if own.get_vocab() != data_tok.get_vocab():
                raise ValueError(
                    f"{p}: the checkpoint's tokenizer ({len(own)} tokens) is not the data's "
                    f"({data_vocab} tokens, {'synthetic' if synthetic else data_cfg.tokenizer}); "
                    "the model and the data must share one vocabulary"
                )
        elif synthetic and vocab != VOCAB_SIZE:
            raise ValueError(
                f"{p}: model vocab_size {vocab} is not the synthetic vocabulary's {VOCAB_SIZE} "
                "(and the checkpoint has no tokenizer); the model and the data must share one vocabulary"
            )
        max_pos = int(cfg.get("max_position_embeddings") or 0)
        if max_pos and seq_len > max_pos:
            raise ValueError(f"{p}: seq_len {seq_len} is beyond the model's max_position_embeddings {max_pos}")


def check_boundaries(data_cfg: DataConfig, *, seq_len: int, n_windows: int, batch_size: int, seed: int) -> int:
    """Tokens after a document boundary in the windows the signal would read (cheap: data only, no model).

    Raises ValueError with the plain reason when there are none: every window holds one document, so the full and
    the document-masked views are the same model on the same tokens and the signal is zero by construction (real
    documents longer than the window; set ``data.options.max_doc_tokens``)."""
    batches, _, _ = _materialise(
        data_cfg, seq_len=seq_len, n_windows=n_windows, batch_size=batch_size, seed=seed, phase=None
    )
    after = sum(int((b["doc_ids"] > 0).sum()) for b in batches)
    if after == 0:
        raise ValueError(
            f"0 tokens after a document boundary in {n_windows} window(s) of {seq_len} tokens: every "
            "window holds a single document, so there is no cross-document signal to measure; set "
            "max_doc_tokens (data.options, or workbench tokenize --max-doc-tokens) or use shorter "
            "documents"
        )
    return after


# ------------------------------------------------------------------------------------------ token kinds


def kind_table(vocab_size: int, synthetic: bool) -> tuple[tuple[str, ...], np.ndarray]:
    """(kind names, id -> kind index [vocab_size]) for the predicted tokens."""
    if not synthetic:
        return OTHER_KINDS, np.zeros(vocab_size, dtype=np.int64)
    table = np.full(vocab_size, SYNTHETIC_KINDS.index("special"), dtype=np.int64)  # ids beyond the vocab too
    for name, ids in (
        ("marker", VOCAB.marker.values()),
        ("key", VOCAB.keys),
        ("value", VOCAB.values),
        ("digit", VOCAB.digits),
        ("filler", VOCAB.filler),
    ):
        table[np.fromiter(ids, dtype=np.int64)] = SYNTHETIC_KINDS.index(name)
    return SYNTHETIC_KINDS, table


def distance_buckets(max_distance: int) -> list[tuple[int, int]]:
    """Log-spaced inclusive buckets [0, 0], [1, 1], [2, 3], [4, 7], ... covering 0..max_distance."""
    out, lo = [(0, 0)], 1
    while lo <= max_distance:
        out.append((lo, 2 * lo - 1))
        lo *= 2
    return out


def _bucket_label(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


# ------------------------------------------------------------------------------------------ compute


@torch.no_grad()
def batch_kl(model, batch: Mapping[str, torch.Tensor], *, chunk_size: int = 1024) -> torch.Tensor:
    """Per-token KL(p_full || p_doc) for one batch -> float32 [B, T-1] on the CPU (position t predicts t+1).

    Full pass: ``attention_mask(doc_ids, "causal")``; document pass: ``attention_mask(doc_ids, "document")``
    in the model's dtype; ``position_ids`` from the batch in both. Log-probs are formed in token chunks.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = batch["input_ids"].to(device)
    pos = batch["position_ids"].to(device)
    docs = batch["doc_ids"].to(device)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    hidden = []
    for mode, dt in (("causal", None), ("document", dtype)):
        mask = attention_mask(docs, mode, dt) if dt is not None else attention_mask(docs, mode)
        with attention_for(model, mask):  # the document pass: a FlexAttention BlockMask where flex runs
            out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
        hidden.append(out.last_hidden_state[:, :-1].reshape(-1, out.last_hidden_state.shape[-1]))
    h_full, h_doc = hidden
    kl = torch.empty(h_full.shape[0], dtype=torch.float32)

    def logp(h: torch.Tensor) -> torch.Tensor:
        logits = head(h).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        return torch.log_softmax(logits, -1)

    for s in range(0, h_full.shape[0], chunk_size):
        lp_full, lp_doc = logp(h_full[s : s + chunk_size]), logp(h_doc[s : s + chunk_size])
        kl[s : s + chunk_size] = divergence.kl(lp_full, lp_doc).clamp_min(0).cpu()
        del lp_full, lp_doc
    return kl.reshape(ids.shape[0], ids.shape[1] - 1)


def token_table(
    batches: Sequence[Mapping[str, torch.Tensor]], *, synthetic: bool, vocab_size: int
) -> dict[str, np.ndarray]:
    """Per-token coordinates of the windows in ``batches`` (every position but each window's last)."""
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("window", "position", "position_id", "doc", "distance", "token_id", "kd_target", "boundary")
    }
    w0 = 0
    for b in batches:
        docs = b["doc_ids"].cpu()
        rows, n = docs.shape
        starts = document_starts(docs)
        idx = torch.arange(n).expand(rows, n)
        cols["window"].append(np.repeat(np.arange(w0, w0 + rows), n - 1))
        cols["position"].append(np.tile(np.arange(n - 1), rows))
        cols["position_id"].append(b["position_ids"].cpu()[:, :-1].reshape(-1).numpy())
        cols["doc"].append(docs[:, :-1].reshape(-1).numpy())
        cols["distance"].append((idx - starts)[:, :-1].reshape(-1).numpy())
        cols["token_id"].append(b["input_ids"].cpu()[:, 1:].reshape(-1).numpy())
        labels = b.get("labels")
        target = (labels.cpu()[:, 1:] != -100) if labels is not None else (docs[:, 1:] == docs[:, :-1])
        cols["kd_target"].append(target.reshape(-1).numpy())
        cols["boundary"].append((docs[:, 1:] != docs[:, :-1]).reshape(-1).numpy())
        w0 += rows
    out = {k: np.concatenate(v) for k, v in cols.items()}
    kinds, table = kind_table(max(vocab_size, int(out["token_id"].max()) + 1), synthetic)
    out["kind"] = table[out["token_id"]]
    out["kinds"] = np.array(kinds, dtype=object)
    return out


def _stats(x: np.ndarray, total: float) -> tuple[float, float, float, float]:
    """mean, median, p95, share of ``total`` for the values x (NaN when empty)."""
    if x.size == 0:
        return (np.nan, np.nan, np.nan, 0.0 if total > 0 else np.nan)
    return (
        float(x.mean()),
        float(np.median(x)),
        float(np.percentile(x, 95)),
        float(x.sum() / total) if total > 0 else np.nan,
    )


def top_share(x: np.ndarray, fraction: float = 0.05) -> float:
    """Share of the total of x carried by its largest ``fraction`` of values (at least one value)."""
    if x.size == 0 or x.sum() <= 0:
        return float("nan")
    k = max(1, int(np.ceil(fraction * x.size)))
    return float(np.sort(x)[-k:].sum() / x.sum())


def summarise(
    kl: np.ndarray,
    tokens: Mapping[str, np.ndarray],
    buckets: Sequence[tuple[int, int]],
    summary_tokens: str = "kd_targets",
) -> dict[str, np.ndarray]:
    """The summary variables of one checkpoint from its per-token KL."""
    use = tokens["kd_target"] if summary_tokens == "kd_targets" else np.ones_like(tokens["kd_target"], dtype=bool)
    x, dist, kind, doc = kl[use], tokens["distance"][use], tokens["kind"][use], tokens["doc"][use]
    total = float(x.sum())
    out: dict[str, Any] = {}
    out["mean"], out["median"], out["p95"], _ = _stats(x, total)
    out["top5_share"] = top_share(x)
    out["mean_after_first_doc"] = float(x[doc > 0].mean()) if (doc > 0).any() else np.nan
    for name, groups in (
        ("distance", [(dist >= lo) & (dist <= hi) for lo, hi in buckets]),
        ("kind", [kind == k for k in range(len(tokens["kinds"]))]),
    ):
        stats = np.array([_stats(x[g], total) for g in groups]).reshape(len(groups), 4)
        for i, stat in enumerate(("mean", "median", "p95", "share")):
            out[f"{stat}_by_{name}"] = stats[:, i]
        out[f"n_by_{name}"] = np.array([int(g.sum()) for g in groups], dtype=np.int64)
    return out


def _materialise(
    data: DataConfig | str | Path | Iterable[Mapping[str, torch.Tensor]],
    *,
    seq_len: int,
    n_windows: int,
    batch_size: int,
    seed: int,
    phase: str | None,
) -> tuple[list[dict[str, torch.Tensor]], DataConfig | None, dict[str, Any]]:
    """-> (batches, data config or None, provenance of the data)."""
    source: dict[str, Any] = {}
    if isinstance(data, (str, Path)):
        source["data_config"] = str(data)
        if phase is not None:
            source["phase"] = phase
        data = load_data_config(data, phase)
    if isinstance(data, DataConfig):
        stream = make_stream(data, seq_len, batch_size, seed)
        batches, left = [], n_windows
        while left > 0:
            b = stream.next()
            take = min(left, batch_size)
            batches.append({k: v[:take] for k, v in b.items()})
            left -= take
        source.update(
            data=wconfig.to_dict(data),
            data_hash=wconfig.config_hash(data),
            seq_len=seq_len,
            n_windows=n_windows,
            seed=seed,
            batch_size=batch_size,
            packing=f"positions={data.packing.positions}, attention={data.packing.attention}",
        )
        return batches, data, source
    batches = [{k: torch.as_tensor(v) for k, v in b.items()} for b in data]
    if not batches:
        raise ValueError("no batches given")
    for i, b in enumerate(batches):
        missing = [k for k in ("input_ids", "position_ids", "doc_ids") if k not in b]
        if missing:
            raise ValueError(f"batch {i}: missing {', '.join(missing)} (the batch contract of workbench.data)")
        shape = b["input_ids"].shape
        if len(shape) != 2 or b["doc_ids"].shape != shape or b["position_ids"].shape != shape:
            raise ValueError(f"batch {i}: input_ids, position_ids, doc_ids must share one [batch, seq] shape")
    widths = {int(b["input_ids"].shape[1]) for b in batches}
    if len(widths) != 1:
        raise ValueError(f"batches of different window lengths {sorted(widths)}")
    digest = hashlib.sha256()
    for b in batches:
        for k in ("input_ids", "position_ids", "doc_ids"):
            digest.update(b[k].cpu().numpy().astype(np.int64).tobytes())
    source.update(
        data="batches",
        data_hash=digest.hexdigest()[:16],
        seq_len=widths.pop(),
        n_windows=sum(int(b["input_ids"].shape[0]) for b in batches),
        seed=-1,
        batch_size=int(batches[0]["input_ids"].shape[0]),
    )
    return batches, None, source


def _load(model_or_path, *, device: str, dtype: torch.dtype):
    """-> (model, label, per-checkpoint coords)."""
    if isinstance(model_or_path, (str, Path)):
        from transformers.utils import logging as hf_logging  # lazy: transformers costs seconds to import

        path = Path(model_or_path)
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar would break our own
        try:
            model, manifest = checkpoint_io.load(path, device=device, dtype=dtype)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        info = {
            "checkpoint_path": str(path),
            "checkpoint_hash": checkpoint_io.checkpoint_hash(path),
            "rope_theta": float(models.rope_theta(model)),
            "step": int(manifest.get("step", -1)),
            "phase": str(manifest.get("phase", "")),
            "objective": str(manifest.get("objective") or ""),
        }
        return model, checkpoints.label(path), info
    model = model_or_path.eval()
    try:
        theta = float(models.rope_theta(model))
    except Exception:  # a model without the rotary layout we know
        theta = float("nan")
    info = {"checkpoint_path": "", "checkpoint_hash": "", "rope_theta": theta, "step": -1, "phase": "", "objective": ""}
    return model, None, info


def cross_document_kl(
    model_or_path,
    data: DataConfig | str | Path | Iterable[Mapping[str, torch.Tensor]],
    *,
    seq_len: int = 1024,
    n_windows: int = 8,
    batch_size: int = 2,
    seed: int = 0,
    phase: str | None = None,
    label: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 1024,
    keep_tokens: bool | None = None,
    summary_tokens: str = "kd_targets",
    token_kinds: bool | None = None,
    progress: bool | Callable[[int], None] = False,
) -> xr.Dataset:
    """The cross-document KD signal of one model -> Dataset with dims (checkpoint=1, token, distance_bucket, kind).

    ``model_or_path``: a checkpoint directory (loaded with ``workbench.checkpoint_io.load``) or a loaded HF causal
    LM (``label`` names it; default ``"model"``). ``data``: a DataConfig, a YAML config path (``phase``
    picks a phase's data), or an iterable of batches of the ``workbench.data`` contract (``labels``
    optional; ``seq_len``/``n_windows``/``seed`` are then read off the batches). ``token_kinds``: classify
    predicted tokens by the synthetic vocabulary (default: when the data has no tokenizer of its own).
    """
    return cross_document_kl_checkpoints(
        [model_or_path],
        data,
        seq_len=seq_len,
        n_windows=n_windows,
        batch_size=batch_size,
        seed=seed,
        phase=phase,
        labels=None if label is None else [label],
        device=device,
        dtype=dtype,
        chunk_size=chunk_size,
        keep_tokens=keep_tokens,
        summary_tokens=summary_tokens,
        token_kinds=token_kinds,
        progress=progress,
    )


def cross_document_kl_checkpoints(
    models_or_paths: Sequence,
    data,
    *,
    seq_len: int = 1024,
    n_windows: int = 8,
    batch_size: int = 2,
    seed: int = 0,
    phase: str | None = None,
    labels: Sequence[str] | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 1024,
    keep_tokens: bool | None = None,
    summary_tokens: str = "kd_targets",
    token_kinds: bool | None = None,
    progress: bool | Callable[[int], None] = False,
) -> xr.Dataset:
    """:func:`cross_document_kl` for several checkpoints on the same windows -> one Dataset along
    ``checkpoint`` (models load one at a time). ``progress``: True for a tqdm bar over all batches, or a
    callable receiving the number of windows done after each batch."""
    if summary_tokens not in ("kd_targets", "all"):
        raise ValueError(f"summary_tokens must be 'kd_targets' or 'all', got {summary_tokens!r}")
    if not models_or_paths:
        raise ValueError("no checkpoint given")
    if labels is not None and len(labels) != len(models_or_paths):
        raise ValueError(f"{len(labels)} labels for {len(models_or_paths)} models")
    batches, data_cfg, source = _materialise(
        data, seq_len=seq_len, n_windows=n_windows, batch_size=batch_size, seed=seed, phase=phase
    )
    if token_kinds is None:
        token_kinds = data_cfg is None or _token_kinds(data_cfg)
        if data_cfg is None:  # raw batches: the synthetic classes only if every id is in the synthetic vocabulary
            token_kinds = all(int(b["input_ids"].max()) < VOCAB_SIZE for b in batches)
    n_windows = sum(int(b["input_ids"].shape[0]) for b in batches)
    bar, tick = None, None
    if callable(progress):
        tick = progress
    elif progress:
        bar = tqdm(total=n_windows * len(models_or_paths), desc="kd-signal", unit="window", dynamic_ncols=True)
        tick = bar.update

    per_ckpt, names, infos, vocab = [], [], [], 0
    try:
        for i, item in enumerate(models_or_paths):
            model, auto_label, info = _load(item, device=device, dtype=dtype)
            vocab = max(vocab, int(model.config.vocab_size))
            too_big = max(int(b["input_ids"].max()) for b in batches)
            if too_big >= model.config.vocab_size:
                raise ValueError(
                    f"{info['checkpoint_path'] or 'model'}: token id {too_big} is beyond its vocab_size "
                    f"{model.config.vocab_size}; the model and the data must share one vocabulary"
                )
            name = labels[i] if labels is not None else (auto_label or "model")
            rows = []
            for b in batches:
                rows.append(batch_kl(model, b, chunk_size=chunk_size).reshape(-1).numpy())
                if tick is not None:
                    tick(int(b["input_ids"].shape[0]))
            per_ckpt.append(np.concatenate(rows))
            names.append(name)
            infos.append(info)
            del model
    finally:
        if bar is not None:
            bar.close()
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"checkpoint label(s) {dupes} given more than once")
    tokens = token_table(batches, synthetic=token_kinds, vocab_size=vocab)
    return build_dataset(
        per_ckpt,
        names,
        infos,
        tokens,
        source,
        summary_tokens=summary_tokens,
        keep_tokens=keep_tokens,
        token_kinds=token_kinds,
        device=device,
        dtype=dtype,
    )


def build_dataset(
    per_ckpt: Sequence[np.ndarray],
    names: Sequence[str],
    infos: Sequence[Mapping[str, Any]],
    tokens: Mapping[str, np.ndarray],
    source: Mapping[str, Any],
    *,
    summary_tokens: str,
    keep_tokens: bool | None,
    token_kinds: bool,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> xr.Dataset:
    """Per-token KL of each checkpoint + the token table -> the ``kd_signal`` Dataset."""
    n_tok = len(tokens["distance"])
    keep = n_tok <= AUTO_KEEP_TOKENS if keep_tokens is None else bool(keep_tokens)
    buckets = distance_buckets(int(tokens["distance"].max()) if n_tok else 0)
    sums = [summarise(kl, tokens, buckets, summary_tokens) for kl in per_ckpt]
    ck = ("checkpoint",)
    data_vars: dict[str, Any] = {}
    for key in ("mean", "median", "p95", "top5_share", "mean_after_first_doc"):
        data_vars[key] = (ck, np.array([s[key] for s in sums], dtype=np.float64))
    for dim, short in (("distance_bucket", "distance"), ("kind", "kind")):
        for stat in ("mean", "median", "p95", "share"):
            data_vars[f"{stat}_by_{short}"] = (ck + (dim,), np.stack([s[f"{stat}_by_{short}"] for s in sums]))
    coords: dict[str, Any] = {
        "checkpoint": np.array(list(names), dtype=object),
        "distance_bucket": np.array([_bucket_label(lo, hi) for lo, hi in buckets], dtype=object),
        "distance_lo": ("distance_bucket", np.array([lo for lo, _ in buckets], dtype=np.int64)),
        "distance_hi": ("distance_bucket", np.array([hi for _, hi in buckets], dtype=np.int64)),
        "n_by_distance": ("distance_bucket", sums[0]["n_by_distance"]),
        "kind": np.array(list(tokens["kinds"]), dtype=object),
        "n_by_kind": ("kind", sums[0]["n_by_kind"]),
    }
    for key in ("checkpoint_path", "checkpoint_hash", "phase", "objective"):
        coords[key] = ("checkpoint", np.array([str(i[key]) for i in infos], dtype=object))
    coords["rope_theta"] = ("checkpoint", np.array([float(i["rope_theta"]) for i in infos], dtype=np.float64))
    coords["step"] = ("checkpoint", np.array([int(i["step"]) for i in infos], dtype=np.int64))
    if keep:
        data_vars["kl"] = (ck + ("token",), np.stack(per_ckpt).astype(np.float32))
        kinds = np.asarray(tokens["kinds"], dtype=object)
        coords.update(
            {
                "token": np.arange(n_tok, dtype=np.int64),
                "token_window": ("token", tokens["window"].astype(np.int32)),
                "token_position": ("token", tokens["position"].astype(np.int32)),
                "token_position_id": ("token", tokens["position_id"].astype(np.int32)),
                "token_doc": ("token", tokens["doc"].astype(np.int32)),
                "token_distance": ("token", tokens["distance"].astype(np.int32)),
                "token_id": ("token", tokens["token_id"].astype(np.int32)),
                "token_kind": ("token", kinds[tokens["kind"]]),
                "kd_target": ("token", tokens["kd_target"].astype(bool)),
                "boundary": ("token", tokens["boundary"].astype(bool)),
            }
        )
    attrs = wstore.provenance(
        kind=wstore.KD_SIGNAL,
        divergence=DIVERGENCE,
        summary_tokens=summary_tokens,
        token_kinds=bool(token_kinds),
        kept_tokens=bool(keep),
        n_tokens=int(n_tok),
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        checkpoint_hashes={n: i["checkpoint_hash"] for n, i in zip(names, infos)},
        token_definition="token t: the distribution at position t of a window, predicting token t+1; the "
        "last position of each window is left out",
        distance_definition="t minus the index of its document's first token (0: the document's first token, "
        "which sees only itself under the document mask)",
        **dict(source),
    )
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


# ------------------------------------------------------------------------------------------ store


def check_writable(store: str | Path, labels: Iterable[str], attrs: Mapping[str, Any] | None = None) -> None:
    """Refuse, before any model runs, a write ``write_kd_signal`` would refuse: a foreign store, a checkpoint
    already in the group, or (with ``attrs``) data settings that differ from the group's."""
    wstore.refuse(store, wstore.KD_SIGNAL, labels=labels, attrs=attrs)


def data_attrs(
    data_cfg: DataConfig,
    *,
    seq_len: int,
    n_windows: int,
    seed: int,
    summary_tokens: str = "kd_targets",
    keep_tokens: bool | None = None,
) -> dict[str, Any]:
    """The attrs a run on ``data_cfg`` will write, for :func:`check_writable` before the run."""
    n = n_windows * (seq_len - 1)
    return {
        "data_hash": wconfig.config_hash(data_cfg),
        "seq_len": seq_len,
        "n_windows": n_windows,
        "seed": seed,
        "summary_tokens": summary_tokens,
        "token_kinds": _token_kinds(data_cfg),
        "kept_tokens": n <= AUTO_KEEP_TOKENS if keep_tokens is None else bool(keep_tokens),
    }


def write_kd_signal(store: str | Path, ds: xr.Dataset) -> Path:
    """Create the ``kd_signal`` group or append ``ds`` to it along ``checkpoint`` (a checkpoint already
    there, or other data settings, are refused with StoreError before anything is written)."""
    return wstore.save(store, wstore.KD_SIGNAL, ds)


__all__ = [
    "batch_kl",
    "check_inputs",
    "check_writable",
    "cross_document_kl",
    "cross_document_kl_checkpoints",
    "data_attrs",
    "distance_buckets",
    "kind_table",
    "load_data_config",
    "summarise",
    "top_share",
    "write_kd_signal",
]

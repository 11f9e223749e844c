"""Loss and KL-to-teacher by position on held-out long documents: the continuous context-extension scorecard.

Retrieval accuracy saturates; the field's continuous measures of context extension (ProLong, YaRN, LongPPL) are
the per-token loss by position on long documents and, for distillation, the student's KL to its teacher by
position: how much of the teacher's position-dependent behaviour the student took over at each distance.

For each checkpoint and each held-out document (one document per window, positions 0..T-1), per predicted token
at position p (predicted from the p tokens before it, p = 1..T-1):

- ``loss``: CE of the checkpoint on that token (nats);
- ``kl`` (with a teacher): KL(p_teacher || p_student) at that token (nats, temperature 1, no T^2).

Both come from the chunked loss of :mod:`workbench.train.losses` on the two models' *hidden states*: the
``lm_head`` is applied per chunk of ``chunk_size`` tokens, so neither model's ``[T x V]`` logits exist and
memory is linear in T. Tokens are grouped into log-spaced position buckets ([0, first), [first, 2 first), ...
up to the longest length asked); per (checkpoint, token set, bucket, document) the sum and the count are
stored, so any coarser bucketing (:func:`regroup`) is exact. Means have percentile bootstrap intervals over
documents (:mod:`workbench.stats`); a bucket that reaches beyond a checkpoint's position limit (its trained
``seq_len``, else ``max_position_embeddings``) is marked ``extrapolation``.

Token sets: ``all`` (every predicted token) and ``answers`` (the tokens a synthetic document supervises:
answers to queries, recurring echoes; for text files every token). On synthetic documents most tokens are
random filler whose loss does not depend on position; the ``answers`` set is where long-range context matters.

Documents (:func:`load_documents`): ``synthetic`` (the synthetic language, many facts and echoes spread over
the whole document, seeded apart from every training stream) or text files through the model's tokenizer
(each file one document, its first ``length`` tokens). Token corpora are the seam left for ``workbench.data``'s
corpus format: :func:`load_documents` is the one place that maps a source to :class:`Documents`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from workbench import checkpoint_io, models, stats
from workbench import checkpoints as ck
from workbench import store as wstore
from workbench.data import corpus as wcorpus
from workbench.data import synthetic
from workbench.train.losses import ChunkedLoss, LossSpec, OnlineTeacher, doubling_edges

TOKEN_SETS = ("all", "answers")
HELD_OUT = 0x5EED24  # mixed into the synthetic documents' seeds: no training stream draws these documents
SYNTHETIC_SOURCE = "synthetic"
TEACHER_CACHE_BYTES = 1 << 30  # the teacher's hidden states of all documents are kept when they fit (else recomputed)


@dataclass
class Documents:
    """Held-out documents: ids (int64 [n_i]) and the ``answers`` mask (bool [n_i], HF convention: target[t]
    means token t is predicted with a loss), plus provenance."""

    ids: list[np.ndarray]
    target: list[np.ndarray]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def max_length(self) -> int:
        return max(len(x) for x in self.ids)


def synthetic_documents(
    n: int, length: int, *, seed: int = 0, num_pairs: int = 8, echoes: int | None = None, queries_per_fact: int = 3
) -> Documents:
    """``n`` synthetic-language documents of exactly ``length`` tokens: a passkey, ``num_pairs`` key-value facts
    and ``echoes`` recurring filler spans (default one per 32 tokens, so about a third of the tokens are
    answers), each queried / recurring at random distances over the whole document."""
    if n < 1 or length < 2:
        raise ValueError(f"need at least 1 document of at least 2 tokens, got {n} of {length}")
    echoes = max(1, length // 32) if echoes is None else echoes
    ids, target = [], []
    for i in range(n):
        doc = synthetic.document(
            np.random.default_rng([HELD_OUT, int(seed), i]),
            int(length),
            num_pairs=num_pairs,
            passkey=True,
            queries_per_fact=queries_per_fact,
            supervise="answers",
            echoes=echoes,
        )
        ids.append(doc.ids)
        target.append(doc.target)
    return Documents(
        ids,
        target,
        dict(
            documents="synthetic",
            n_documents=n,
            length=int(length),
            seed=int(seed),
            num_pairs=num_pairs,
            echoes=echoes,
            queries_per_fact=queries_per_fact,
        ),
    )


def text_documents(paths: Sequence[str | Path], tokenizer, length: int) -> Documents:
    """Each text file one document: its first ``length`` tokens through ``tokenizer`` (all tokens are answers)."""
    ids, target = [], []
    for p in map(Path, paths):
        if not p.is_file():
            raise FileNotFoundError(f"--documents {p}: text file not found")
        x = np.asarray(tokenizer(p.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"], dtype=np.int64)[
            :length
        ]
        if len(x) < 2:
            raise ValueError(f"--documents {p}: fewer than 2 tokens")
        ids.append(x)
        target.append(np.r_[False, np.ones(len(x) - 1, dtype=bool)])
    return Documents(
        ids,
        target,
        dict(
            documents="text",
            files=[str(Path(p).resolve()) for p in paths],  # provenance: absolute, as checkpoint_path
            length=int(length),
            tokenizer=str(getattr(tokenizer, "name_or_path", "")),
        ),
    )


def corpus_documents(path: str | Path, n: int, length: int, tokenizer=None) -> Documents:
    """The first ``n`` documents (of at least 2 tokens) of a token corpus (``workbench tokenize``), each cut to
    ``length`` tokens; its held-out split ``CORPUS/val`` when it has one. Read from the memory-map; refused when
    ``tokenizer`` (the checkpoint's) is not the corpus's."""
    path = Path(path)
    split = path / "val" if (path / "val" / wcorpus.MANIFEST).is_file() else path
    corp = wcorpus.open_corpus(split, where=f"--documents {path}")
    if tokenizer is not None:
        wcorpus.check_tokenizer(corp.manifest, tokenizer, "the checkpoint's tokenizer", f"--documents {path}")
    ids, target = [], []
    for start, end in zip(corp.offsets[:-1], corp.offsets[1:]):
        if len(ids) == n:
            break
        if end - start >= 2:
            x = corp.tokens(int(start), int(min(end, start + length)))  # int64 [<= length]
            ids.append(x)
            target.append(np.r_[False, np.ones(len(x) - 1, dtype=bool)])
    if not ids:
        raise ValueError(f"--documents {path}: no document of at least 2 tokens")
    return Documents(
        ids,
        target,
        dict(
            documents="tokens",
            corpus=str(split.resolve()),  # provenance: absolute, as checkpoint_path
            length=int(length),
            n_documents=len(ids),
            tokenizer=corp.manifest["tokenizer"]["name"],
        ),
    )


def load_documents(source: Sequence[str], *, n: int, length: int, tokenizer=None, seed: int = 0) -> Documents:
    """The documents of a source: ``["synthetic"]``, one token corpus directory (``workbench tokenize``; its
    ``val`` split when present), or text file paths (read with ``tokenizer``)."""
    source = list(source)
    if source == [SYNTHETIC_SOURCE]:
        return synthetic_documents(n, length, seed=seed)
    if SYNTHETIC_SOURCE in source:
        raise ValueError("--documents: 'synthetic' cannot be mixed with files")
    dirs = [p for p in source if Path(p).is_dir()]
    if dirs:
        if len(source) > 1:
            raise ValueError(f"--documents {dirs[0]}: a token corpus is the only source (got {len(source)})")
        return corpus_documents(dirs[0], n, length, tokenizer)
    if tokenizer is None:
        raise ValueError("text documents need the model's tokenizer (the checkpoint has none: pass --tokenizer)")
    docs = text_documents(source, tokenizer, length)
    return Documents(docs.ids[:n], docs.target[:n], {**docs.source, "n_documents": min(n, len(docs.ids))})


# ------------------------------------------------------------------------------------------ compute


def _hidden(model, ids: torch.Tensor) -> torch.Tensor:
    """Final hidden states [T, H] of one document (positions 0..T-1, plain causal attention)."""
    pos = torch.arange(ids.shape[-1], device=ids.device)[None]
    return model.get_decoder()(input_ids=ids[None], position_ids=pos, use_cache=False).last_hidden_state[0]


@torch.no_grad()
def document_losses(
    model, ids: np.ndarray, *, teacher=None, teacher_hidden: torch.Tensor | None = None, chunk_size: int = 1024
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per predicted token t = 1..T-1 of one document: (CE [T-1], KL(teacher || model) [T-1] or None).

    The chunked loss on hidden states: at most one chunk of both models' logits exists at a time.
    ``teacher_hidden``: the teacher's final hidden states [T, H_t] of this document, when computed once for many
    checkpoints (``teacher`` still gives its lm_head)."""
    device = next(model.parameters()).device
    x = torch.as_tensor(ids, dtype=torch.long, device=device)
    h = _hidden(model, x)[:-1].float()  # [T-1, H]
    labels = x[1:]  # [T-1]
    online = None
    if teacher is not None:
        th = teacher_hidden if teacher_hidden is not None else _hidden(teacher, x.to(next(teacher.parameters()).device))
        online = OnlineTeacher(
            th[:-1].float().to(device),
            teacher.get_output_embeddings().weight.float().to(device),
            getattr(teacher.config, "final_logit_softcapping", None),
        )
    spec = LossSpec(
        ce_weight=1.0,
        kd_weight=1.0 if online is not None else 0.0,
        chunk_size=chunk_size,
        student_softcap=getattr(model.config, "final_logit_softcapping", None),
    )
    w = model.get_output_embeddings().weight.float()
    _, ce, kd = ChunkedLoss.apply(h, w, labels, torch.arange(len(labels), device=device), online, spec, 1.0)
    return ce.cpu().numpy(), (kd.clamp_min(0).cpu().numpy() if online is not None else None)


def bucket_sums(values: np.ndarray, mask: np.ndarray, edges: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(sum, count) per bucket [lo, hi) of the predicted positions 1..len(values) where ``mask``."""
    pos = np.arange(1, len(values) + 1)
    sums, counts = np.zeros(len(edges) - 1), np.zeros(len(edges) - 1, dtype=np.int64)
    for b, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        sel = mask & (pos >= lo) & (pos < hi)
        sums[b], counts[b] = float(values[sel].sum()), int(sel.sum())
    return sums, counts


def bucket_edges(docs: Documents, first_bucket: int = 32, edges: Sequence[int] | None = None) -> list[int]:
    """The position bucket edges: ``edges`` as given (checked), else doubling from ``first_bucket`` to the
    longest document."""
    T = docs.max_length
    edges = [int(e) for e in edges] if edges is not None else doubling_edges(T, first_bucket)
    if edges[0] != 0 or edges[-1] < T or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(f"bucket edges must start at 0, increase and reach {T}, got {edges}")
    return edges


def settings(docs: Documents, edges: Sequence[int], teacher: str | Path | None) -> dict[str, str]:
    """The attrs one ``position_loss`` group must share (documents, bucketing, teacher), as the store keeps them."""
    return {
        "data_hash": _docs_hash(docs),
        "edges": json.dumps(list(map(int, edges))),
        "teacher_hash": ck.inspect(teacher).content_hash() if teacher is not None else "",
    }


def bucket_labels(edges: Sequence[int]) -> list[str]:
    return [f"{lo}-{hi}" for lo, hi in zip(edges[:-1], edges[1:])]


def position_loss(
    paths: Sequence[str | Path],
    docs: Documents,
    *,
    teacher: str | Path | None = None,
    first_bucket: int = 32,
    edges: Sequence[int] | None = None,
    extrapolate: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    chunk_size: int = 1024,
    n_boot: int = stats.N_BOOT,
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Checkpoints x held-out documents -> Dataset (checkpoint, tokens, bucket[, document]) with per-document
    sums and counts and the bootstrap summaries (:func:`summarise`). Position limits are checked first."""
    if not paths:
        raise ValueError("no checkpoints given")
    infos = [ck.inspect(p) for p in paths]
    t_info = ck.inspect(teacher) if teacher is not None else None
    T = docs.max_length
    for info in infos + ([t_info] if t_info else []):
        limit, where = info.position_limit()
        if T > limit and not extrapolate and info is t_info:
            raise ValueError(f"teacher {info.label}: documents of {T} tokens exceed its {limit} positions ({where})")
        if T > limit and not extrapolate:
            raise ValueError(
                f"{info.label}: documents of {T} tokens exceed the {limit} positions it was trained or "
                f"configured for ({where}); pass --extrapolate to evaluate beyond them (recorded)"
            )
    edges = bucket_edges(docs, first_bucket, edges)
    n_doc, n_b = len(docs.ids), len(edges) - 1
    shape = (len(infos), len(TOKEN_SETS), n_b, n_doc)
    loss_sum, kl_sum = np.zeros(shape), np.full(shape, np.nan)
    count = np.zeros(shape, dtype=np.int64)
    dev = models.pick_device(device)
    t_model = checkpoint_io.load(t_info.path, device=dev, dtype=dtype)[0].eval() if t_info else None
    t_hidden: list[torch.Tensor | None] = [None] * n_doc  # the teacher's hidden states, once per document
    if t_model is not None and sum(map(len, docs.ids)) * t_model.config.hidden_size * 4 <= TEACHER_CACHE_BYTES:
        with torch.no_grad():
            t_hidden = [_hidden(t_model, torch.as_tensor(x, device=dev)).float().cpu() for x in docs.ids]
    thetas, hashes = [], []
    bar = tqdm(total=len(infos) * n_doc, desc="position-loss", unit="doc", disable=not progress)
    try:
        for c, info in enumerate(infos):
            model = checkpoint_io.load(info.path, device=dev, dtype=dtype)[0].eval()
            if t_model is not None and t_model.config.vocab_size != model.config.vocab_size:
                raise ValueError(
                    f"{info.label}: vocab {model.config.vocab_size} != teacher vocab "
                    f"{t_model.config.vocab_size}; KL needs one vocabulary"
                )
            thetas.append(float(models.rope_theta(model)))
            hashes.append(info.content_hash())
            for d, (ids, target) in enumerate(zip(docs.ids, docs.target)):
                ce, kl = document_losses(model, ids, teacher=t_model, teacher_hidden=t_hidden[d], chunk_size=chunk_size)
                for s, mask in enumerate((np.ones(len(ce), dtype=bool), target[1:])):
                    loss_sum[c, s, :, d], count[c, s, :, d] = bucket_sums(ce, mask, edges)
                    if kl is not None:
                        kl_sum[c, s, :, d] = bucket_sums(kl, mask, edges)[0]
                bar.update()
            del model
    finally:
        bar.close()
    limits = np.array([i.position_limit()[0] for i in infos], dtype=np.int64)
    dims = ("checkpoint", "tokens", "position_bucket", "document")
    ds = xr.Dataset(
        {"loss_sum": (dims, loss_sum), "kl_sum": (dims, kl_sum), "count": (dims, count)},
        coords={
            "checkpoint": np.array([i.label for i in infos], dtype=object),
            "tokens": np.array(TOKEN_SETS, dtype=object),
            "position_bucket": np.array(bucket_labels(edges), dtype=object),
            "bucket_start": ("position_bucket", np.array(edges[:-1], dtype=np.int64)),
            "bucket_stop": ("position_bucket", np.array(edges[1:], dtype=np.int64)),
            "document": np.arange(n_doc),
            "checkpoint_path": ("checkpoint", np.array([str(i.path.resolve()) for i in infos], dtype=object)),
            "checkpoint_hash": ("checkpoint", np.array(hashes, dtype=object)),
            "rope_theta": ("checkpoint", np.array(thetas)),
            "max_positions": ("checkpoint", limits),
            "step": ("checkpoint", np.array([i.step for i in infos], dtype=np.int64)),
            "phase": ("checkpoint", np.array([i.phase for i in infos], dtype=object)),
            "objective": ("checkpoint", np.array([i.objective for i in infos], dtype=object)),
            "extrapolation": (("checkpoint", "position_bucket"), np.array(edges[1:])[None, :] > limits[:, None] + 1),
        },
    )
    ds = summarise(ds, n_boot=n_boot, seed=seed)
    ds.attrs = wstore.provenance(
        kind="position_loss",
        teacher=str(t_info.path.resolve()) if t_info else "",
        teacher_hash=t_info.content_hash() if t_info else "",
        dtype=str(dtype).replace("torch.", ""),
        device=dev.type,
        edges=list(map(int, edges)),
        n_boot=n_boot,
        bootstrap_seed=seed,
        extrapolate=extrapolate,
        checkpoint_hashes=dict(zip([i.label for i in infos], hashes)),
        data_hash=_docs_hash(docs),
        position="a token at position p is predicted from the p tokens before it (p = 1..T-1)",
        kl="KL(teacher || checkpoint), temperature 1, nats" if t_info else "no teacher",
        **docs.source,
    )
    return ds


def _docs_hash(docs: Documents) -> str:
    import hashlib

    h = hashlib.sha256()
    for x in docs.ids:
        h.update(np.asarray(x, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def summarise(ds: xr.Dataset, *, n_boot: int = stats.N_BOOT, level: float = stats.LEVEL, seed: int = 0) -> xr.Dataset:
    """Add ``loss``, ``kl`` [checkpoint, tokens, bucket] (mean over documents of each document's mean in the
    bucket) with ``*_lo`` / ``*_hi`` bootstrap intervals over documents, and ``tokens_in_bucket``."""
    out = ds.copy()
    for var in ("loss", "kl"):
        per_doc = (
            (ds[f"{var}_sum"] / ds["count"].where(ds["count"] > 0))
            .transpose("checkpoint", "tokens", "position_bucket", "document")
            .values
        )
        mean, lo, hi = (np.full(per_doc.shape[:-1], np.nan) for _ in range(3))
        for i in np.ndindex(*per_doc.shape[:-1]):
            x = per_doc[i][~np.isnan(per_doc[i])]
            if x.size:
                iv = stats.hierarchical_bootstrap(x[None], n_boot=n_boot, level=level, seed=seed)
                mean[i], lo[i], hi[i] = iv.mean, iv.lo, iv.hi
        dims = ("checkpoint", "tokens", "position_bucket")
        out[var], out[f"{var}_lo"], out[f"{var}_hi"] = (xr.DataArray(a, dims=dims) for a in (mean, lo, hi))
    out["tokens_in_bucket"] = ds["count"].sum("document")
    out["loss"].attrs["description"] = "mean over documents of the per-document mean CE in the bucket (nats)"
    out["kl"].attrs["description"] = "mean over documents of the per-document mean KL(teacher || checkpoint) (nats)"
    out["loss_lo"].attrs["description"] = f"{level:.0%} percentile bootstrap interval over documents ({n_boot})"
    return out


def regroup(ds: xr.Dataset, edges: Sequence[int], **kw) -> xr.Dataset:
    """The same data in coarser buckets (``edges`` a subset of the stored edges), summaries recomputed (with the
    stored bootstrap settings unless ``kw`` says otherwise)."""
    old = [int(x) for x in ds["bucket_start"].values] + [int(ds["bucket_stop"].values[-1])]
    edges = [int(e) for e in edges]
    if edges[0] != 0:
        edges = [0] + edges
    if edges[-1] < old[-1]:
        edges = edges + [old[-1]]
    missing = [e for e in edges if e not in old]
    if missing:
        raise ValueError(f"edges {missing} are not bucket edges of the data ({old})")
    group = np.searchsorted(np.array(edges), ds["bucket_start"].values, side="right") - 1
    labels = np.array(bucket_labels(edges), dtype=object)
    raw = (
        ds[["loss_sum", "kl_sum", "count"]]
        .assign_coords(position_bucket=labels[group])
        .drop_vars(["bucket_start", "bucket_stop", "extrapolation"], errors="ignore")
    )
    summed = raw.groupby("position_bucket", squeeze=False).sum(skipna=False).sel(position_bucket=labels)
    summed = summed.assign_coords(
        bucket_start=("position_bucket", np.array(edges[:-1])), bucket_stop=("position_bucket", np.array(edges[1:]))
    )
    if "max_positions" in ds.coords:
        summed = summed.assign_coords(
            extrapolation=(
                ("checkpoint", "position_bucket"),
                np.array(edges[1:])[None, :] > ds["max_positions"].values[:, None] + 1,
            )
        )
    stored = {"n_boot": ds.attrs.get("n_boot", stats.N_BOOT), "seed": ds.attrs.get("bootstrap_seed", 0)}
    out = summarise(summed, **{**stored, **kw})
    out.attrs = dict(ds.attrs)
    return out


def paired_difference(
    ds: xr.Dataset,
    a: Sequence[str],
    b: Sequence[str],
    *,
    var: str = "kl",
    tokens: str = "answers",
    n_boot: int = stats.N_BOOT,
    seed: int = 0,
) -> list[stats.Interval]:
    """Per bucket: mean of var(A) - var(B) over (seed index, document) with the paired hierarchical bootstrap;
    ``a``/``b`` are the checkpoints of two arms, seeds in the same order (the same documents on both sides)."""
    per_doc = (ds[f"{var}_sum"] / ds["count"].where(ds["count"] > 0)).sel(tokens=tokens)
    out = []
    for bucket in ds["position_bucket"].values:
        x = np.stack([per_doc.sel(checkpoint=c, position_bucket=bucket).values for c in a])  # [seed, doc]
        y = np.stack([per_doc.sel(checkpoint=c, position_bucket=bucket).values for c in b])
        keep = np.isfinite(x).all(axis=0) & np.isfinite(y).all(axis=0)  # documents with tokens in the bucket
        out.append(stats.paired_bootstrap(x[:, keep], y[:, keep], n_boot=n_boot, seed=seed))
    return out


def table(ds: xr.Dataset, *, tokens: str = "answers") -> str:
    """Markdown: per checkpoint and bucket, loss and KL with intervals (x = beyond the position limit)."""
    has_kl = bool(np.isfinite(ds["kl"].values).any())
    lines = [
        "| checkpoint | bucket | loss | " + ("KL to teacher |" if has_kl else ""),
        "|---|---|---|" + ("---|" if has_kl else ""),
    ]
    for c in map(str, ds["checkpoint"].values):
        for b in map(str, ds["position_bucket"].values):
            cell = ds.sel(checkpoint=c, tokens=tokens, position_bucket=b)
            mark = " (x)" if "extrapolation" in ds.coords and bool(cell["extrapolation"]) else ""
            row = (
                f"| {c} | {b}{mark} | {float(cell['loss']):.3f} "
                f"[{float(cell['loss_lo']):.3f}, {float(cell['loss_hi']):.3f}] |"
            )
            if has_kl:
                row += f" {float(cell['kl']):.3f} [{float(cell['kl_lo']):.3f}, {float(cell['kl_hi']):.3f}] |"
            lines.append(row)
    return "\n".join(lines)

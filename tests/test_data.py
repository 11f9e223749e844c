"""workbench.data: the language of the corpora, packing switches against transformers, streams."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from workbench.config import DataConfig, ModelConfig, PackingConfig
from workbench.data import attention_mask, make_stream, pack, repeated_sequences
from workbench.data import synthetic as syn
from workbench.data.tokenizer import VOCAB, decode, synthetic_tokenizer
from workbench.models import build_model

ASK, SET, PASS = VOCAB.marker["ASK"], VOCAB.marker["SET"], VOCAB.marker["PASS"]


@pytest.fixture(scope="module")
def model():
    cfg = ModelConfig(
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=128,
        max_position_embeddings=1024,
        rope_theta=500.0,
    )
    return build_model(cfg, seed=0)


def short_cfg(**kw) -> DataConfig:
    return DataConfig(kind="synthetic-short", doc_len_min=20, doc_len_max=60, num_pairs_min=1, num_pairs_max=3, **kw)


def answers_resolve_inside(ids: np.ndarray, start: int, end: int) -> int:
    """Parse one document ``ids[start:end]``: every query's answer equals its needle inside the document.

    Returns the number of queries checked. Fails when a query's needle is missing from the document.
    """
    facts, i, queries = {}, start, 0
    while i < end:
        if ids[i] == SET:
            facts[ids[i + 1]] = ids[i + 2 : i + 3]
            i += 3
        elif ids[i] == PASS:
            facts[PASS] = ids[i + 1 : i + 6]
            i += 6
        elif ids[i] == ASK:
            key, n = ids[i + 1], 5 if ids[i + 1] == PASS else 1
            assert key in facts, f"query at {i} ({decode(ids[i : i + 2])}) has no needle in its document"
            assert np.array_equal(ids[i + 2 : i + 2 + n], facts[key]), f"wrong answer at {i}"
            queries += 1
            i += 2 + n
        else:
            i += 1
    return queries


# ------------------------------------------------------------------------------------- the corpora


def test_short_documents_never_depend_on_earlier_documents():
    stream = make_stream(short_cfg(), seq_len=256, batch_size=8, seed=3)
    batch = stream.next()
    n_docs = n_answers = 0
    for row in range(8):
        ids, labels, doc = (batch[k][row].numpy() for k in ("input_ids", "labels", "doc_ids"))
        for d in np.unique(doc):
            span = np.flatnonzero(doc == d)
            start, end = span[0], span[-1] + 1
            assert labels[start] == -100, "a document's first token must not be a target"
            n_answers += answers_resolve_inside(ids, start, end)
            n_docs += 1
    assert n_docs > 16 and n_answers > 16  # the property was checked on real queries, not vacuously


def test_long_documents_fill_the_window_with_queries_at_varied_distances():
    cfg = DataConfig(kind="synthetic-long", num_pairs_min=2, num_pairs_max=4)
    batch = make_stream(cfg, seq_len=512, batch_size=16, seed=0).next()
    assert (batch["doc_ids"] == 0).all()  # one document per window
    distances = []
    for ids in batch["input_ids"].numpy():
        assert answers_resolve_inside(ids, 0, len(ids)) >= 2 * 3
        for q in np.flatnonzero((ids[:-1] == ASK) & np.isin(ids[1:], VOCAB.keys)):
            distances.append(q - np.flatnonzero((ids[:-1] == SET) & (ids[1:] == ids[q + 1]))[0])
    distances = np.array(distances)
    assert len(np.unique(distances)) > 20, "needle-query distances must vary"
    assert distances.max() > 0.7 * 512 and distances.min() < 0.1 * 512


def test_supervise_answers_puts_the_loss_on_answers_only():
    rng = np.random.default_rng(0)
    doc = syn.document(rng, 200, num_pairs=3, queries_per_fact=2, supervise="answers")
    text = decode(doc.ids[doc.target])
    assert doc.target.sum() == 3 * 2 + 2 * 5  # 3 facts x 2 queries x 1 value + passkey x 2 queries x 5 digits
    assert all(tok.startswith("v") or tok.isdigit() for tok in text.split())


def test_echo_spans_are_supervised_copies_of_earlier_filler_in_the_same_document():
    rng = np.random.default_rng(4)
    doc = syn.document(rng, 256, num_pairs=0, passkey=False, echoes=3, supervise="answers")
    supervised = np.flatnonzero(doc.target)
    assert 3 * 7 <= len(supervised) <= 3 * 15 and np.isin(doc.ids[supervised], syn.FILLER).all()
    for run in np.split(supervised, np.flatnonzero(np.diff(supervised) > 1) + 1):
        span = doc.ids[run[0] - 1 : run[-1] + 1]  # the echo, including its unsupervised first token
        earlier = [i for i in range(run[0] - len(span)) if np.array_equal(doc.ids[i : i + len(span)], span)]
        assert earlier, "an echo must repeat a span that occurs earlier in its document"


def test_repeated_sequences_are_identical_copies_at_their_offsets():
    ids, pos, offsets = repeated_sequences(512, 48, seed=1, gap=5)
    ids = ids[0]
    assert ids.shape == (512,) and pos[0].tolist() == list(range(512))
    assert offsets.tolist() == list(range(0, 512 - 47, 53))
    first = ids[:48]
    for off in offsets.tolist():
        assert torch.equal(ids[off : off + 48], first)
    _, reset, _ = repeated_sequences(512, 48, seed=1, gap=0, positions="reset")
    assert reset[0, 48:96].tolist() == list(range(48))


# ---------------------------------------------------------------------- packing vs transformers


def packed_batch(positions: str, attention: str) -> dict[str, torch.Tensor]:
    cfg = short_cfg(packing=PackingConfig(positions=positions, attention=attention))
    return make_stream(cfg, seq_len=192, batch_size=2, seed=7).next()


def test_document_masked_packed_forward_equals_each_document_alone(model):
    batch = packed_batch("reset", "document")
    mask = attention_mask(batch["doc_ids"], "document", torch.float32)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits
        for row in range(2):
            doc = batch["doc_ids"][row]
            assert doc.max() >= 2
            for d in doc.unique():
                span = (doc == d).nonzero().squeeze(1)
                alone = model(input_ids=batch["input_ids"][row, span][None]).logits[0]
                torch.testing.assert_close(packed[row, span], alone, atol=1e-5, rtol=0)


def test_continue_positions_with_document_mask_match_the_document_at_its_offset(model):
    batch = packed_batch("continue", "document")
    mask = attention_mask(batch["doc_ids"], "document", torch.float32)
    assert torch.equal(batch["position_ids"][0], torch.arange(192))
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], attention_mask=mask).logits
        span = (batch["doc_ids"][0] == 1).nonzero().squeeze(1)
        alone = model(input_ids=batch["input_ids"][0, span][None], position_ids=span[None]).logits[0]
    torch.testing.assert_close(packed[0, span], alone, atol=1e-5, rtol=0)


def test_causal_attention_really_crosses_documents_even_with_reset_positions(model):
    """transformers alone would infer per-document attention from restarting position ids; ours must not."""
    batch = packed_batch("reset", "causal")
    ids, pos, doc = batch["input_ids"][:1], batch["position_ids"][:1], batch["doc_ids"][0]
    span = (doc == 1).nonzero().squeeze(1)
    with torch.no_grad():
        causal = model(
            input_ids=ids, position_ids=pos, attention_mask=attention_mask(batch["doc_ids"][:1], "causal")
        ).logits
        reference = model(input_ids=ids, position_ids=pos, attention_mask=torch.ones_like(ids)).logits  # plain 2D mask
        alone = model(input_ids=ids[0, span][None]).logits[0]
    torch.testing.assert_close(causal, reference, atol=1e-6, rtol=0)
    assert (causal[0, span] - alone).abs().max() > 1e-3  # earlier documents are visible


def test_position_ids_reach_the_rotary_embedding_unchanged(model):
    batch = packed_batch("reset", "document")
    seen = {}

    def grab(module, args, kwargs):
        seen["pos"] = kwargs.get("position_ids", args[1] if len(args) > 1 else None)

    handle = model.model.rotary_emb.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                attention_mask=attention_mask(batch["doc_ids"], "document"),
            )
    finally:
        handle.remove()
    assert torch.equal(seen["pos"], batch["position_ids"])
    starts = torch.cat([torch.tensor([True]), batch["doc_ids"][0, 1:] != batch["doc_ids"][0, :-1]])
    assert (batch["position_ids"][0][starts] == 0).all() and (batch["position_ids"][0] == 0).sum() == starts.sum()


def test_bool_and_additive_document_masks_agree(model):
    batch = packed_batch("continue", "document")
    kw = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    with torch.no_grad():
        add = model(**kw, attention_mask=attention_mask(batch["doc_ids"], "document", torch.float32)).logits
        boolean = model(**kw, attention_mask=attention_mask(batch["doc_ids"], "document", torch.bool)).logits
    torch.testing.assert_close(add, boolean, atol=1e-5, rtol=0)


def test_pack_masks_targets_at_document_starts():
    rng = np.random.default_rng(0)
    docs = [syn.document(rng, n) for n in (10, 7, 15)]
    for d in docs:
        d.target[:] = True
    w = pack(docs, "reset")
    assert (w["labels"][[0, 10, 17]] == -100).all() and (w["labels"] != -100).sum() == 32 - 3
    assert w["doc_ids"].tolist() == [0] * 10 + [1] * 7 + [2] * 15
    assert w["position_ids"].tolist() == list(range(10)) + list(range(7)) + list(range(15))


# ------------------------------------------------------------------------------------------ streams


@pytest.mark.parametrize("kind", ["synthetic-long", "synthetic-short", "repeated"])
def test_stream_cursor_round_trips_exactly(kind):
    cfg = DataConfig(kind=kind, doc_len_min=16, doc_len_max=40)
    a = make_stream(cfg, seq_len=96, batch_size=3, seed=5)
    for _ in range(4):
        a.next()
    state = json.loads(json.dumps(a.state_dict()))  # survives a JSON round trip (checkpoints)
    expected = [a.next() for _ in range(3)]
    b = make_stream(cfg, seq_len=96, batch_size=3, seed=5)
    b.load_state_dict(state)
    for want in expected:
        got = b.next()
        for key in want:
            assert torch.equal(got[key], want[key]), key
    assert not torch.equal(make_stream(cfg, 96, 3, seed=6).next()["input_ids"], expected[0]["input_ids"])


def test_ranks_are_disjoint_and_their_union_is_the_single_process_batch():
    cfg = short_cfg()
    single = make_stream(cfg, seq_len=128, batch_size=4, seed=1)
    ranks = [make_stream(cfg, seq_len=128, batch_size=2, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(3):
        whole = single.next()
        parts = [r.next() for r in ranks]
        for key in whole:
            assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
        assert not torch.equal(parts[0]["input_ids"], parts[1]["input_ids"])


def test_cursor_of_another_stream_is_refused():
    a = make_stream(short_cfg(), seq_len=64, batch_size=2, seed=1)
    with pytest.raises(ValueError, match="seed"):
        make_stream(short_cfg(), seq_len=64, batch_size=2, seed=2).load_state_dict(a.state_dict())


# ---------------------------------------------------------------------------------------- real data


def test_text_jsonl_and_parquet_with_a_local_hf_tokenizer(tmp_path):
    import pandas as pd

    tok_dir = tmp_path / "tok"
    synthetic_tokenizer().save_pretrained(tok_dir)  # a real local HF tokenizer directory
    rng = np.random.default_rng(0)
    texts = [decode(syn.document(rng, int(n)).ids) for n in rng.integers(20, 50, size=12)]
    (tmp_path / "a.txt").write_text("\n".join(texts[:4]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"body": t}) for t in texts[4:8]))
    pd.DataFrame({"text": texts[8:]}).to_parquet(tmp_path / "c.parquet")
    configs = [
        DataConfig(kind="text", paths=[str(tmp_path / "a.txt")], tokenizer=str(tok_dir), options={"split": "lines"}),
        DataConfig(kind="jsonl", paths=[str(tmp_path / "b.jsonl")], tokenizer=str(tok_dir), options={"field": "body"}),
        DataConfig(kind="parquet", paths=[str(tmp_path / "c.parquet")], tokenizer=str(tok_dir)),
    ]
    for cfg, src in zip(configs, (texts[:4], texts[4:8], texts[8:])):
        stream = make_stream(cfg, seq_len=32, batch_size=2, seed=0)
        corpus = " ".join(t + " <eos>" for t in src)  # a local tokenizer with eos: documents end in eos
        per_epoch = len(corpus.split()) // 32
        assert per_epoch >= 2
        seen = [decode(row) for _ in range(per_epoch // 2) for row in stream.next()["input_ids"]]
        assert all(s in corpus for s in seen)  # every window is a slice of the tokenised corpus
        assert len(set(seen)) == len(seen)  # no window twice within an epoch


@pytest.mark.parametrize(
    "cfg, match",
    [
        (DataConfig(kind="books"), "data.kind"),
        (DataConfig(kind="text", paths=["/nope/missing.txt"]), r"data.paths\[0\]: file not found"),
        (DataConfig(kind="synthetic-short", options={"queries": 2}), "data.options.queries"),
        (DataConfig(kind="synthetic-short", doc_len_min=0), "doc_len_min"),
        (DataConfig(kind="repeated", options={"period": 1000}), "data.options.period"),
        (DataConfig(kind="text", paths=["pyproject.toml"]), "does not look like text"),
    ],
)
def test_bad_input_fails_with_one_clear_message(cfg, match):
    with pytest.raises(ValueError, match=match):
        make_stream(cfg, seq_len=128, batch_size=2, seed=0)


def test_missing_tokenizer_directory_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("w1 w2")
    cfg = DataConfig(kind="text", paths=[str(tmp_path / "a.txt")], tokenizer=str(tmp_path / "no-tok"))
    with pytest.raises(ValueError, match="data.tokenizer: tokenizer directory not found"):
        make_stream(cfg, seq_len=8, batch_size=1, seed=0)

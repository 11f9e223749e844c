"""Peak resident memory of the trainer on a small and a large token corpus, same model and steps (not a test).

    .venv/bin/python analyses/benchmarks/bench_corpus_rss.py [--small 10e6 --large 200e6 --steps 20]

A byte-level BPE tokenizer is trained offline on synthetic English-like text (tests/corpus_fixtures.py); about
a million tokens of that text go through ``workbench tokenize`` (the real path), and two corpora of ``--small`` and
``--large`` tokens are written from those ids with the same writer (``workbench.data.corpus.CorpusWriter``), cut
into <= 256-token documents. Each run: ``workbench.train`` in a fresh process (one thread), a 2-layer student on
``data.kind: tokens`` windows of 512 tokens, peak RSS from ``getrusage`` (memory-mapped corpus pages count when
touched). Reported: both peaks, the difference in MB and in % (goal: under 5 %), best of ``--rounds`` alternating
rounds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from corpus_fixtures import bpe_tokenizer, documents, write_jsonl  # noqa: E402

from workbench.data import corpus  # noqa: E402

CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from workbench import config
from workbench.train import train
cfg = config.from_dict(config.RunConfig, json.loads(sys.argv[1]))
train(cfg, out=sys.argv[2], progress=False)
print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(seed_corpus: Path, out: Path, n_tokens: int) -> Path:
    """A corpus of ``n_tokens`` from the seed corpus's documents, repeated, through the corpus writer."""
    src = corpus.open_corpus(seed_corpus)
    ids, offsets = src.tokens(0, src.n_tokens), np.asarray(src.offsets)
    docs = np.split(ids, offsets[1:-1])
    w = corpus.CorpusWriter(out, src.manifest["tokenizer"]["vocab_size"], max_doc_tokens=256)
    while w.n_tokens < n_tokens:
        take = (
            docs
            if w.n_tokens + src.n_tokens <= n_tokens
            else docs[: max(1, len(docs) * (n_tokens - w.n_tokens) // src.n_tokens)]
        )
        w.add(take)
    corpus.write_manifest(
        out,
        w.close(),
        w,
        {k: src.manifest[k] for k in ("tokenizer", "eos")}
        | {"sources": [], "options": {}, "fingerprint": f"bench-{n_tokens}", "split": "train"},
    )
    (out / corpus.TOKENIZER_DIR).symlink_to((seed_corpus / corpus.TOKENIZER_DIR).resolve())
    return out


def run(corpus_dir: Path, out: Path, steps: int) -> float:
    student = dict(
        vocab_size=512,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=32,
        intermediate_size=256,
        max_position_embeddings=1024,
        rope_theta=10000.0,
    )
    cfg = {
        "name": "rss",
        "model": student,
        "seed": 0,
        "data": {"kind": "tokens", "paths": [str(corpus_dir)]},
        "optim": {"micro_batch_size": 4, "grad_accum_steps": 1},
        "checkpoint": {"every": 0, "keep_last": 1},
        "phases": [{"name": "p", "steps": steps, "seq_len": 512, "rope_theta": 10000.0, "lr": 1e-3}],
    }
    env = {
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PATH": "/usr/bin:/bin",
    }
    res = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(cfg), str(out)], env=env, capture_output=True, text=True, cwd=ROOT
    )
    if res.returncode:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])["maxrss_mb"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=float, default=10e6)
    p.add_argument("--large", type=float, default=200e6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workdir", default=None, help="keep the corpora here (default: a temporary directory)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bpe = bpe_tokenizer(work / "bpe")
        src = write_jsonl(work / "seed.jsonl", documents(3000, seed=0, words=(50, 600)))
        seed, _ = corpus.tokenize([src], work / "seed", bpe, progress=False)
        sizes = {"small": int(args.small), "large": int(args.large)}
        dirs = {k: build(seed, work / k, n) for k, n in sizes.items()}
        for k, d in dirs.items():
            bin_mb = sum(f.stat().st_size for f in d.glob("tokens-*.bin")) / 2**20
            print(f"{k}: {corpus.open_corpus(d).n_tokens:,} tokens, {bin_mb:,.0f} MB of shards")
        peaks: dict[str, list[float]] = {k: [] for k in dirs}
        for r in range(args.rounds):
            for k in ("small", "large") if r % 2 == 0 else ("large", "small"):
                peaks[k].append(run(dirs[k], work / f"run-{k}-{r}", args.steps))
                print(f"round {r} {k}: peak RSS {peaks[k][-1]:.1f} MB")
        s, big = min(peaks["small"]), min(peaks["large"])
        print(
            f"\npeak RSS (best of {args.rounds}): {sizes['small']:,} tokens {s:.1f} MB, {sizes['large']:,} tokens "
            f"{big:.1f} MB; difference {big - s:+.1f} MB ({100 * (big - s) / s:+.2f} %; goal under 5 %)"
        )


if __name__ == "__main__":
    main()

"""``workbench tokenize`` throughput beside a plain ``datasets.map(batched=True)`` of the same tokenizer over the
same files (not a test).

    .venv/bin/python analyses/benchmarks/bench_tokenize.py [--docs 6000 --num-proc 2 --rounds 2]

A byte-level BPE tokenizer trained offline on synthetic English-like text (tests/corpus_fixtures.py) and a jsonl
file of ``--docs`` documents in that text. Plain side: ``load_dataset("json")`` then ``.map(tokenizer, batched=True,
num_proc=N)`` into a fresh cache, ids counted (what a user writes by hand, nothing kept). Workbench side: the whole
``workbench tokenize`` (source hashing, the same map, eos, writing the .bin shards, offsets, manifest, atomic
rename). Reported: tokens/s of each, best of ``--rounds`` alternating rounds, and the ratio (workbench / plain).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from corpus_fixtures import bpe_tokenizer, documents, write_jsonl  # noqa: E402

from workbench.data import corpus  # noqa: E402


def plain(src: Path, tok_dir: Path, cache: Path, num_proc: int, batch_size: int) -> tuple[int, float]:
    import datasets
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    ds = datasets.load_dataset("json", data_files=[str(src)], split="train", cache_dir=str(cache))
    ds = ds.map(
        lambda b: tok(b["text"], add_special_tokens=False),
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc if num_proc > 1 else None,
        remove_columns=ds.column_names,
    )
    n = sum(len(x) for x in ds["input_ids"])
    return n, time.perf_counter() - t0


def ours(src: Path, tok_dir: Path, out: Path, num_proc: int, batch_size: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    corpus.tokenize(
        [src], out, tok_dir, num_proc=num_proc, batch_size=batch_size, progress=False, log=lambda s: None, add_eos=False
    )
    return corpus.open_corpus(out).n_tokens, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=6000)
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bpe = bpe_tokenizer(work / "bpe")
        src = write_jsonl(work / "docs.jsonl", documents(args.docs, seed=0, words=(50, 800)))
        rates: dict[str, list[float]] = {"plain": [], "workbench": []}
        for r in range(args.rounds):
            for side in ("plain", "workbench") if r % 2 == 0 else ("workbench", "plain"):
                target = work / f"{side}-{r}"
                n, secs = (
                    plain(src, bpe, target, args.num_proc, args.batch_size)
                    if side == "plain"
                    else ours(src, bpe, target, args.num_proc, args.batch_size)
                )
                rates[side].append(n / secs)
                print(f"round {r} {side:>9}: {n:,} tokens in {secs:.2f} s = {n / secs:,.0f} tokens/s")
                shutil.rmtree(target, ignore_errors=True)
        best = {k: max(v) for k, v in rates.items()}
        print(
            f"\nbest of {args.rounds}, num_proc={args.num_proc}: plain datasets.map {best['plain']:,.0f} tokens/s, "
            f"workbench tokenize {best['workbench']:,.0f} tokens/s; ratio workbench/plain "
            f"{best['workbench'] / best['plain']:.2f}"
        )


if __name__ == "__main__":
    main()

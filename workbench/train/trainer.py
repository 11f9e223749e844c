"""The training loop: phases with their own window, theta and objective; KD from a frozen teacher.

Read top to bottom: ``preflight`` (every input error before any compute), ``build`` (student, teacher,
FSDP2 when launched by torchrun), ``train`` (the loop), then checkpointing and metrics helpers.

One optimiser step = ``grad_accum_steps`` micro-batches of ``micro_batch_size`` windows per rank. The
loss of every micro-batch is divided by the number of valid target tokens of the whole step, summed over
micro-batches and ranks, so the gradient is that of one big batch whatever the accumulation or world size.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field, replace as dc_replace
from pathlib import Path
from typing import Any

import torch
import yaml

from workbench import config as wconfig
from workbench import architectures, models, tokenizers
from workbench.config import ConfigError, RunConfig
from workbench.train import ablations, distributed, state
from workbench.train.vocab import kd_vocab_size
from workbench.train.losses import CachedTeacher, LossSpec, OnlineTeacher, bucket_edges, chunked_loss, loss_by_bucket
from workbench.train.schedule import lr_at


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became NaN/inf; training stopped before the optimiser step."""


# -------------------------------------------------------------------------------------- preflight


def run_dir_of(cfg: RunConfig, out: str | None = None) -> Path:
    return Path(out or cfg.out_dir or Path("runs") / cfg.name)


def needs_teacher(cfg: RunConfig) -> bool:
    return any(ph.objective in ("kd", "ce+kd") for ph in cfg.phases)


def phase_data(cfg: RunConfig, i: int) -> wconfig.DataConfig:
    return cfg.phases[i].data or cfg.data


def phase_seed(cfg: RunConfig, i: int) -> int:
    """Each phase draws its own windows (seed, phase index)."""
    return cfg.seed * 1000 + i


def windows_per_step(cfg: RunConfig, world_size: int) -> int:
    return cfg.optim.micro_batch_size * cfg.optim.grad_accum_steps * world_size


def _hf_config(path: Path, what: str) -> dict[str, Any]:
    if not path.is_dir():
        raise models.CheckpointError(f"{what}: directory {path} not found")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise models.CheckpointError(f"{what}: {path} has no config.json (not a Hugging Face model directory)")
    return json.loads(cfg_file.read_text())


def preflight(cfg: RunConfig, run_dir: Path, *, resume: bool, world_size: int = 1) -> tuple[RunConfig, int]:
    """Every input error as one clear exception, before any model is built or any data generated.

    Returns the config to train with and its hash version: on ``--resume`` of a run written by an older
    version, ``cfg`` with that version's defaults restored for the keys the YAML leaves out (see
    ``workbench.config.as_written_by``), checked against the run's ``config_hash``."""
    has_run = run_dir.is_dir() and (any(run_dir.glob("ckpt-*")) or (run_dir / "metrics.jsonl").exists())
    first_rank = os.environ.get("RANK", "0") == "0"  # other ranks may start after rank 0 created the run
    if has_run and not resume and first_rank:
        raise FileExistsError(f"{run_dir}: already holds a run; pass --resume to continue it, or --out for a new "
                              "run directory (nothing is overwritten)")
    version = wconfig.HASH_VERSION
    if resume and has_run:
        ckpt = state.latest_checkpoint(run_dir)
        if ckpt is not None:
            manifest = models.read_manifest(ckpt)
            old, version = manifest.get("config_hash"), int(manifest.get("config_hash_version", 1))
            cfg = wconfig.as_written_by(cfg, version)
            new = wconfig.config_hash(cfg, version)
            if old != new:
                raise ConfigError(f"{run_dir}: --resume with a config that differs from the one the run was started "
                                  f"with (config_hash {old} vs {new}, hash version {version}); see {run_dir}/run.yaml")
    check_inputs(cfg, world_size)
    return cfg, version


def check_inputs(cfg: RunConfig, world_size: int = 1) -> None:
    """Phases vs model windows, data configs, teacher directory / vocabulary / window, teacher cache."""
    from workbench import data

    longest = max(ph.seq_len for ph in cfg.phases)
    for i, ph in enumerate(cfg.phases):
        if ph.seq_len > cfg.model.max_position_embeddings:
            raise ConfigError(f"phases[{i}].seq_len: {ph.seq_len} is beyond the student's max_position_embeddings "
                              f"{cfg.model.max_position_embeddings}")
        if ph.seq_len < 2:
            raise ConfigError(f"phases[{i}].seq_len: needs at least 2 tokens (one input, one target)")
        if ph.freeze_wavelengths is not None and world_size > 1:
            raise ConfigError(f"phases[{i}].freeze_wavelengths: the frozen-pairs ablation runs single-process only")
        try:
            data.stream.check(phase_data(cfg, i), ph.seq_len, cfg.optim.micro_batch_size, 0, world_size)
        except ValueError as exc:
            raise ConfigError(f"phases[{i}] ({ph.name}): {exc}") from None
        if ph.objective != "ce" and cfg.teacher is None:
            raise ConfigError(f"phases[{i}].objective: {ph.objective!r} needs a teacher, but the config has no "
                              "'teacher' section")
    if cfg.init_from:
        _hf_config(Path(cfg.init_from), "init_from")
    if cfg.teacher is not None and needs_teacher(cfg):
        if cfg.teacher.cache:
            from workbench.train import teacher_cache

            teacher_cache.check(Path(cfg.teacher.cache), cfg, world_size)
        else:
            tcfg = _hf_config(Path(cfg.teacher.path), "teacher.path")
            kd_vocab_size(cfg, tcfg.get("vocab_size"))  # same rows, or one tokenizer padded differently
            t_max = tcfg.get("max_position_embeddings", 0)
            if longest > t_max:
                raise ConfigError(f"phases: the longest phase ({longest} tokens) is beyond the teacher's "
                                  f"max_position_embeddings {t_max} ({cfg.teacher.path})")
    tokenizers.check_run(cfg)  # one vocabulary: the teacher's tokenizer equals the data's (before any training)


# ------------------------------------------------------------------------------------------ model


class DistillModule(torch.nn.Module):
    """Student (+ frozen teacher) and the chunked loss in one forward, so FSDP2's root unshards both
    lm_head weights while the loss uses them. Returns a tuple of tensors (loss, per_token, ce_sum, kd_sum,
    valid)."""

    def __init__(self, student, teacher=None, teacher_positions: str = "same"):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.teacher_positions = teacher_positions  # "reset": position-invariant targets (an ablation)

    def forward(self, batch: dict[str, torch.Tensor], attention_mask, spec: LossSpec, normalizer: float,
                cached: CachedTeacher | None = None):
        kw = dict(attention_mask=attention_mask, position_ids=batch["position_ids"], use_cache=False)
        hidden = self.student.model(input_ids=batch["input_ids"], **kw).last_hidden_state[:, :-1]
        labels = batch["labels"][:, 1:]  # HF convention: hidden at t predicts labels[t + 1]
        teacher = cached
        if spec.kd_weight and cached is None:
            with torch.no_grad():
                if self.teacher_positions == "reset":
                    from workbench.data import attention_mask as doc_mask

                    kw = dict(kw, position_ids=ablations.document_positions(batch["doc_ids"]),
                              attention_mask=doc_mask(batch["doc_ids"], "document", hidden.dtype))
                t_hidden = self.teacher.model(input_ids=batch["input_ids"], **kw).last_hidden_state[:, :-1]
            teacher = OnlineTeacher(t_hidden, self.teacher.lm_head.weight, architectures.final_softcap(self.teacher.config))
        if architectures.final_softcap(self.student.config):  # Gemma 2: the loss sees the soft-capped logits
            spec = dc_replace(spec, student_softcap=architectures.final_softcap(self.student.config))
        r = chunked_loss(hidden, self.student.lm_head.weight, labels, spec, teacher=teacher, normalizer=normalizer)
        return r.loss, r.per_token, r.ce_sum, r.kd_sum, r.valid


def resolve_precision(name: str, device: torch.device) -> str:
    """``optim.precision`` for a device: auto is bf16 on CUDA and fp32 elsewhere."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if name not in ("fp32", "bf16"):
        raise ConfigError(f"optim.precision: {name!r} is not one of 'auto', 'fp32', 'bf16'")
    return name


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on the run's device (CPU included) for the student, the teacher and the chunked loss;
    master weights, optimiser state and checkpoints stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def load_teacher(cfg: RunConfig, device: torch.device, precision: str = "fp32"):
    """The frozen teacher at its configured theta; held in bf16 under bf16 precision (it is never trained)."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    teacher, _ = models.load(cfg.teacher.path, device=device, dtype=dtype, allow_plain_hf=True)
    if cfg.teacher.rope_theta is not None:
        models.set_rope_theta(teacher, cfg.teacher.rope_theta, models.model_config_of(teacher).rope_scaling)
    teacher.requires_grad_(False)
    return teacher.eval()


# ------------------------------------------------------------------------------------------- loop


@dataclass
class StepStats:
    """Sums over one optimiser step (this rank), all-reduced before logging."""

    loss: float = 0.0
    ce: float = 0.0
    kd: float = 0.0
    buckets: dict[str, list[float]] = field(default_factory=dict)

    def add(self, per_token: torch.Tensor, ce_sum: torch.Tensor, kd_sum: torch.Tensor,
            buckets: dict[str, tuple[float, int]]) -> None:
        self.loss += float(per_token.sum())
        self.ce += float(ce_sum)
        self.kd += float(kd_sum)
        for key, (total, count) in buckets.items():
            acc = self.buckets.setdefault(key, [0.0, 0.0])
            acc[0] += total
            acc[1] += count


def train(cfg: RunConfig, *, out: str | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Run (or resume) a training run; returns the run directory."""
    from workbench import data

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one progress bar: ours
    run_dir = run_dir_of(cfg, out)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg, hash_version = preflight(cfg, run_dir, resume=resume, world_size=world)
    device = models.pick_device(cfg.device)
    dd = distributed.init(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        return _train(cfg, run_dir, resume, progress, device, dd, data, hash_version)
    finally:
        distributed.shutdown()


def _train(cfg, run_dir: Path, resume: bool, progress: bool, device, dd: distributed.Dist, data,
           hash_version: int = wconfig.HASH_VERSION) -> Path:
    ckpt = state.latest_checkpoint(run_dir) if resume else None
    if resume and ckpt is None and dd.is_main:
        print(f"workbench train: no complete checkpoint in {run_dir}; starting from scratch", file=sys.stderr)
    torch.manual_seed(cfg.seed)
    run_tokenizer, _ = tokenizers.for_run(cfg, warn=False)  # preflight checked it (and warned once)
    precision = resolve_precision(cfg.optim.precision, device)
    # --- student: from the checkpoint we resume, from init_from, or fresh (seeded)
    if ckpt is not None:
        student, _ = models.load(ckpt, device=device)
    elif cfg.init_from:
        student, _ = models.load(cfg.init_from, device=device, allow_plain_hf=True)
    else:
        student = models.build_model(cfg.model, seed=cfg.seed, device=device)
    teacher = None
    if needs_teacher(cfg) and not cfg.teacher.cache:
        teacher = load_teacher(cfg, device, precision)
    cache = None
    if needs_teacher(cfg) and cfg.teacher.cache:
        from workbench.train import teacher_cache

        cache = teacher_cache.TeacherCache(Path(cfg.teacher.cache))
    student.train()
    if cfg.optim.activation_checkpointing:
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    module = DistillModule(student, teacher, cfg.teacher.positions if cfg.teacher else "same")
    shadow = None  # a plain CPU copy of the student for saving/evaluating when FSDP shards it
    if dd.enabled:
        blocks = list(student.model.layers) + (list(teacher.model.layers) if teacher is not None else [])
        distributed.shard(module, blocks, precision=precision)
        if dd.is_main:
            shadow = models.build_model(models.model_config_of(student), seed=None)
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.phases[0].lr, betas=tuple(cfg.optim.betas),
                            eps=cfg.optim.eps, weight_decay=cfg.optim.weight_decay)

    ends = [sum(ph.steps for ph in cfg.phases[:i + 1]) for i in range(len(cfg.phases))]
    total = ends[-1]
    step, tokens, saved_data = 0, 0, None
    if ckpt is not None:
        st = state.read_state(ckpt)
        _load_optimizer(student, opt, st["optimizer"])
        step, tokens, saved_data = st["step"], st["tokens"], st["data"]
        state.set_rng_state(st["rng"][dd.rank if dd.rank < len(st["rng"]) else 0])
    parent = ckpt.name if ckpt is not None else cfg.init_from
    metrics_path = run_dir / "metrics.jsonl"
    if dd.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_run_yaml(cfg, run_dir)
        _truncate_metrics(metrics_path, step)
    chash = wconfig.config_hash(cfg, hash_version)  # a run keeps the hash version it was started with
    autocast = autocast_for(precision, device)
    mask_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    bar = _progress_bar(total, step, progress and dd.is_main)
    eval_warned = False

    for pi, ph in enumerate(cfg.phases):
        start = ends[pi] - ph.steps
        if step >= ends[pi]:
            continue
        # phase switch: the student's rotary frequencies are rebuilt for this phase's theta
        models.set_rope_theta(student, ph.rope_theta, ph.rope_scaling)
        if shadow is not None:
            models.set_rope_theta(shadow, ph.rope_theta, ph.rope_scaling)
        dcfg = phase_data(cfg, pi)
        stream = data.make_stream(dcfg, ph.seq_len, cfg.optim.micro_batch_size, phase_seed(cfg, pi),
                                  rank=dd.rank, world_size=dd.world_size)
        if saved_data is not None and step > start:
            stream.load_state_dict(saved_data)
        saved_data = None
        spec = dc_replace(LossSpec.for_objective(cfg.loss, ph.objective),  # padded vocabularies: workbench.train.vocab
                          kd_vocab_size=kd_vocab_size(cfg, teacher.config.vocab_size if teacher is not None else None))
        frozen = ablations.FrozenPairs.for_phase(student, ph)
        edges = bucket_edges(ph.seq_len)
        while step < ends[pi]:
            t0 = time.perf_counter()
            lr = lr_at(step - start, ph.steps, ph.lr, ph.warmup_steps, ph.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            micro = []
            for _ in range(cfg.optim.grad_accum_steps):
                first = stream.state_dict().get("next_window", 0) + dd.rank * cfg.optim.micro_batch_size
                micro.append((first, {k: v.to(device) for k, v in stream.next().items()}))
            # the step's valid target tokens over micro-batches and ranks: every micro-batch loss divides by it
            n_valid = max(distributed.all_reduce_sum(
                torch.tensor([float((b["labels"][:, 1:] != spec.ignore_index).sum()) for _, b in micro],
                             device=device).sum(), dd).item(), 1.0)
            stats = StepStats()
            for first, b in micro:
                mask = data.attention_mask(b["doc_ids"], dcfg.packing.attention, mask_dtype)
                cached = cache.lookup(pi, first, b["input_ids"], spec) if cache is not None and spec.kd_weight else None
                with autocast:
                    loss, per_tok, ce_sum, kd_sum, valid = module(b, mask, spec, n_valid, cached)
                loss.backward()
                stats.add(per_tok, ce_sum, kd_sum, loss_by_bucket(per_tok, valid, b["position_ids"][:, 1:], edges))
            grad_norm = _clip(student, cfg.optim.grad_clip)
            loss_v, ce_v, kd_v = (float(x) / n_valid for x in distributed.all_reduce_sum(
                torch.tensor([stats.loss, stats.ce, stats.kd], dtype=torch.float64, device=device), dd))
            if not (math.isfinite(loss_v) and math.isfinite(grad_norm)):
                last = state.latest_checkpoint(run_dir)
                if dd.is_main:
                    _append(metrics_path, {"kind": "error", "step": step + 1, "phase": ph.name, "loss": loss_v,
                                           "grad_norm": grad_norm, "time": time.time()})
                raise TrainingDiverged(f"step {step + 1} (phase {ph.name}): loss {loss_v}, grad norm {grad_norm}; "
                                       f"stopped before the optimiser step. Last good checkpoint: {last}")
            opt.step()
            if frozen is not None:
                frozen.restore()
            opt.zero_grad(set_to_none=True)
            step += 1
            step_tokens = sum(int(b["input_ids"].numel()) for _, b in micro) * dd.world_size
            tokens += step_tokens
            dt = time.perf_counter() - t0
            if step % cfg.metrics_every == 0 or step == ends[pi]:
                buckets = _reduce_buckets(stats.buckets, dd)  # a collective: every rank
            if dd.is_main and (step % cfg.metrics_every == 0 or step == ends[pi]):
                _append(metrics_path, {"kind": "train", "step": step, "phase": ph.name,
                                       "rope_theta": ph.rope_theta, "loss": loss_v, "ce": ce_v, "kd": kd_v,
                                       "lr": lr, "grad_norm": grad_norm, "tokens": tokens,
                                       "tokens_per_s": step_tokens / dt, "peak_mem_mb": _peak_mem_mb(device),
                                       "loss_by_bucket": buckets, "time": time.time()})
            bar.update(1)
            bar.set_postfix(phase=ph.name, loss=f"{loss_v:.4f}", theta=f"{ph.rope_theta:g}")
            phase_end = step == ends[pi]
            if phase_end or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0):
                manifest = {"run": cfg.name, "phase": ph.name, "phase_index": pi, "step": step,
                            "phase_step": step - start, "phase_end": phase_end, "objective": ph.objective,
                            "teacher": cfg.teacher.path if cfg.teacher and ph.objective != "ce" else None,
                            "teacher_theta": models.rope_theta(teacher) if teacher is not None else
                            (cache.meta["teacher_theta"] if cache is not None else None),
                            "data": wconfig.to_dict(dcfg), "parent": parent, "config_hash": chash,
                            "config_hash_version": hash_version, "precision": precision,
                            "seq_len": ph.seq_len, "tokens": tokens, "world_size": dd.world_size}
                trainer_state = {"step": step, "tokens": tokens, "phase_index": pi, "data": stream.state_dict(),
                                 "config_hash": chash}
                saved = _save(run_dir / f"ckpt-{step:06d}", student, shadow, opt, manifest, trainer_state, dd,
                              tokenizer=run_tokenizer)
                parent = saved.name
                if dd.is_main:
                    state.prune(run_dir, cfg.checkpoint.keep_last)
            if cfg.eval_every and (step % cfg.eval_every == 0 or phase_end):
                eval_warned = _evaluate(cfg, student, shadow, dd, metrics_path, step, ph, eval_warned, device)
    bar.close()
    distributed.barrier(dd)
    return run_dir


# --------------------------------------------------------------------------------------- helpers


def _clip(model, max_norm: float) -> float:
    """Global gradient norm (over ranks, as torchtitan does for DTensor grads) and clipping."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    if max_norm and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return float(norm)


def _reduce_buckets(buckets: dict[str, list[float]], dd) -> dict[str, float]:
    keys = list(buckets)
    t = distributed.all_reduce_sum(torch.tensor([buckets[k] for k in keys], dtype=torch.float64), dd)
    return {k: (float(s) / c if c else None) for k, (s, c) in zip(keys, t.tolist())}


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _full_state(student, opt) -> tuple[dict, dict]:
    """Full (unsharded, CPU) model and optimiser state dicts, keyed by parameter name."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(student, opt, options=opts)


def _load_optimizer(student, opt, osd: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(student, opt, osd, options=StateDictOptions(full_state_dict=True))


def _save(path: Path, student, shadow, opt, manifest: dict, trainer_state: dict, dd, tokenizer=None) -> Path:
    msd, osd = _full_state(student, opt)
    low = sorted({str(v.dtype) for v in msd.values() if v.is_floating_point() and v.dtype != torch.float32})
    if low:  # bf16 runs compute in bf16 but keep (and save) fp32 master weights
        raise RuntimeError(f"{path}: refusing to save non-fp32 master weights ({', '.join(low)})")
    rngs = distributed.all_gather_objects(state.rng_state(), dd)
    if dd.is_main:
        model = student
        if shadow is not None:
            shadow.load_state_dict(msd)
            model = shadow
        full = {**trainer_state, "optimizer": osd, "rng": rngs}
        def extra(tmp: Path) -> None:
            state.write_state(tmp, full)
            if tokenizer is not None:  # the run's tokenizer travels with every checkpoint
                tokenizers.save(tokenizer, tmp)

        models.save_checkpoint(model, path, manifest, extra=extra)
    distributed.barrier(dd)
    return path


def _evaluate(cfg, student, shadow, dd, metrics_path: Path, step: int, ph, warned: bool, device) -> bool:
    """Quick retrieval eval on rank 0 (``workbench.evals.quick_eval``); skipped with one warning if absent."""
    if dd.enabled:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        msd = get_model_state_dict(student, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dd.is_main:
            shadow.load_state_dict(msd)
    if dd.is_main:
        try:
            from workbench.evals import quick_eval
        except ImportError:
            if not warned:
                warnings.warn("eval_every is set but workbench.evals.quick_eval is not available; skipping evals")
            return True
        model = shadow if shadow is not None else student
        was_training = model.training
        model.eval()
        with torch.no_grad():
            rows = quick_eval(model, lengths=list(cfg.eval_lengths), samples=cfg.eval_samples, seed=cfg.seed,
                              tasks=list(cfg.eval_tasks))
        model.train(was_training)
        for r in rows:
            _append(metrics_path, {"kind": "eval", "step": step, "phase": ph.name, "rope_theta": ph.rope_theta,
                                   **{k: r[k] for k in ("task", "length", "accuracy", "answer_logprob")}})
    distributed.barrier(dd)
    return warned


def _append(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records of steps after the checkpoint (they are recomputed), atomically."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    keep = [ln for ln in lines if _record_step(ln) <= step]
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)


def _record_step(line: str) -> float:
    """The step of a metrics line; a line cut short by a kill counts as after every checkpoint."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return math.inf


def _write_run_yaml(cfg: RunConfig, run_dir: Path) -> None:
    target = run_dir / "run.yaml"
    if target.exists():
        return  # the resolved config of the run is written once; resume checks the hash instead
    tmp = run_dir / ".run.yaml.tmp"
    tmp.write_text(yaml.safe_dump(wconfig.to_dict(cfg), sort_keys=False))
    os.replace(tmp, target)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step", dynamic_ncols=True)

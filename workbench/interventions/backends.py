"""Two interpretability backends over one checkpoint: TransformerLens' TransformerBridge and nnsight.

Both load a workbench checkpoint (or any local HF Llama directory) into *their own* model instance (the
bridge rewrites the instance it is handed), run a batch under several specs at once and return, per spec,
the same captures under TransformerLens-style names (built by :func:`workbench.interventions.hooks.act_name`),
all in the same layout:

- ``logits`` [B, T, V]
- ``blocks.{i}.hook_resid_post`` [B, T, D] (the residual stream after block i)
- ``blocks.{i}.hook_attn_out`` [B, T, D] (attention output of block i, after o_proj)
- ``blocks.{i}.attn.hook_rot_q`` [B, H, T, d] / ``blocks.{i}.attn.hook_rot_k`` [B, H_kv, T, d] (post-RoPE,
  after the spec's edits; pair j = dims j and j + d/2)
- ``blocks.{i}.attn.pattern_js`` [B, T] (TransformerLens only: it runs eager attention; Jensen-Shannon
  divergence of each query's attention row from the first spec's, averaged over heads)

``TransformerLensBackend`` batches the specs along the batch axis and edits each slice in the
``hook_rot_q``/``hook_rot_k`` hooks; ``NNsightBackend`` runs one ``tracer.invoke`` per spec inside a single
trace and edits ``self_attn.source.apply_rotary_pos_emb_0.output``. Position ids are always explicit.
Shapes in comments: n specs, B rows, T tokens, H (H_kv) query (key) heads, d head_dim, D hidden, V vocabulary.
"""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from workbench import architectures, checkpoint_io, checkpoints, models
from workbench.budget import budget_source, memory_budget
from workbench.divergence import js_probs
from workbench.interventions.hooks import act_name
from workbench.interventions.perturb import apply_spec, touches
from workbench.interventions.specs import Geometry, Spec, validate_all

BACKENDS = ("nnsight", "tl")

CAPTURE_ALL = ("*",)


def name_filter(patterns: Iterable[str] | Callable[[str], bool] | None) -> Callable[[str], bool]:
    """A predicate over capture names from glob patterns (``blocks.1.attn.hook_rot_*``) or a callable."""
    if patterns is None:
        return lambda name: False
    if callable(patterns):
        return patterns
    pats = [patterns] if isinstance(patterns, str) else list(patterns)
    return lambda name: any(fnmatch.fnmatchcase(name, p) for p in pats)


def load_hf(
    path: str | Path, *, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32, device: str = "cpu"
):
    """A fresh transformers instance of a workbench checkpoint or a plain local HF Llama dir -> (model, manifest)."""
    return checkpoint_io.load(path, attn_implementation=attn_implementation, dtype=dtype, device=device)


def _check_inputs(input_ids: torch.Tensor, position_ids: torch.Tensor, geom: Geometry, vocab: int) -> None:
    if input_ids.ndim != 2 or position_ids.shape != input_ids.shape:
        raise ValueError(
            f"input_ids and position_ids must both be [batch, seq]; got {tuple(input_ids.shape)} "
            f"and {tuple(position_ids.shape)}"
        )
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"input_ids: token id {int(input_ids.max())} outside the model's vocabulary of {vocab}")
    if position_ids.numel() and int(position_ids.min()) < 0:
        raise ValueError("position_ids: negative positions")
    limit = length_dependent_limit(geom)
    if limit is not None and position_ids.numel() and int(position_ids.max()) + 1 > limit:
        raise ValueError(
            f"position_ids up to {int(position_ids.max())}: with {geom.scaling['rope_type']} RoPE scaling "
            f"transformers switches to other frequencies beyond {limit} positions, so the spectrum the "
            f"specs are resolved against (read at load) would not be the one the model runs with; keep "
            f"positions below {limit}"
        )


def length_dependent_limit(geom: Geometry) -> int | None:
    """Positions up to which the rotary frequencies read at load are the ones the model runs with, for the
    scaling types whose frequencies depend on the sequence (transformers' dynamic-NTK and LongRoPE updates
    in the forward); None for every other type."""
    kind = (geom.scaling or {}).get("rope_type", (geom.scaling or {}).get("type"))
    if kind == "dynamic":
        return int(geom.max_position_embeddings)
    if kind == "longrope":
        return int(geom.scaling.get("original_max_position_embeddings") or geom.max_position_embeddings)
    return None


class Backend:
    """What both backends share: geometry, input checks, the capture filter."""

    name = "base"
    supports_pattern = False

    geometry: Geometry
    vocab_size: int
    path: Path
    manifest: dict
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32

    def run(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        specs: Sequence[Spec],
        *,
        capture: Iterable[str] | Callable[[str], bool] | None = None,
    ) -> list[dict[str, torch.Tensor]]:
        """Run the batch once per spec (all in one forward); per spec, ``logits`` plus every capture whose
        name the filter accepts (see the module docstring)."""
        input_ids, position_ids, specs = self._prepare(input_ids, position_ids, specs)
        with torch.no_grad():
            return self._run(input_ids, position_ids, specs, name_filter(capture))

    def _prepare(self, input_ids, position_ids, specs: Sequence[Spec]) -> tuple[torch.Tensor, torch.Tensor, list[Spec]]:
        """Checked long ids and positions on the backend's device, and the validated specs."""
        input_ids = torch.as_tensor(input_ids, dtype=torch.long)
        position_ids = torch.as_tensor(position_ids, dtype=torch.long)
        _check_inputs(input_ids, position_ids, self.geometry, self.vocab_size)
        specs = list(specs)
        if not specs:
            raise ValueError("no specs to run")
        validate_all(specs, self.geometry)
        return input_ids.to(self.device), position_ids.to(self.device), specs

    def lens(self, resid: torch.Tensor) -> torch.Tensor:
        """Logit lens: final norm + unembedding applied to a residual stream [..., D]."""
        raise NotImplementedError

    def stream(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        specs: Sequence[Spec],
        reduce: Callable[[str, torch.Tensor], None],
        *,
        want: Iterable[str] | Callable[[str], bool] | None = None,
    ) -> None:
        """Run the batch once per spec, all specs as one batch of ``len(specs) * B`` rows, and hand every
        capture to ``reduce(name, x)`` *while the forward runs*, with ``x`` laid out [n_specs, B, T, ...]
        (a view of the batched activation: no clone, no host copy). Names as in the module docstring;
        ``blocks.{i}.attn.hook_pattern`` [n, B, T, H, T_k] on the TransformerLens backend. Nothing is
        kept: what ``reduce`` keeps is all that survives the forward (streaming statistics)."""
        input_ids, position_ids, specs = self._prepare(input_ids, position_ids, specs)
        with torch.no_grad():
            self._stream(input_ids, position_ids, specs, reduce, name_filter(CAPTURE_ALL if want is None else want))

    def _run(self, input_ids, position_ids, specs, want) -> list[dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _stream(self, input_ids, position_ids, specs, reduce, want) -> None:
        raise NotImplementedError


def _edit_slices(
    x: torch.Tensor, specs: Sequence[Spec], which: str, layer: int, position_ids: torch.Tensor, geom: Geometry
) -> torch.Tensor:
    """Apply each spec, in place, to its slice of a batched post-RoPE tensor [n*B, H, T, d] (a fresh output of
    the rotary code; unchanged where no spec touches this layer)."""
    b = position_ids.shape[0]
    for c, spec in enumerate(specs):
        if touches(spec, which, layer):
            part = x[c * b : (c + 1) * b]
            part.copy_(apply_spec(spec, part, which, layer, position_ids, geom))
    return x


class TransformerLensBackend(Backend):
    """TransformerLens 4 ``TransformerBridge`` booted on its own eager-attention instance, real theta."""

    name = "tl"
    supports_pattern = True

    def __init__(self, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from transformer_lens.model_bridge import TransformerBridge  # lazy: only the TL backend needs TransformerLens

        self.path, self.device, self.dtype = Path(path), torch.device(device), dtype
        hf, self.manifest = load_hf(path, attn_implementation="eager", dtype=dtype, device=device)
        architectures.check_tl(hf.config)  # one clear error where TransformerLens cannot edit post-RoPE q/k
        self.softcap = architectures.final_softcap(hf.config)  # the bridge's unembed does not soft-cap (Gemma 2)
        self.geometry = Geometry.of(hf)
        self.vocab_size = hf.config.vocab_size
        theta = models.rope_theta(hf)
        tok = copy.deepcopy(checkpoints.own_tokenizer(path))
        # TL re-loads the tokenizer by name to add BOS unless told it already does; ours is local only
        tok.init_kwargs.setdefault("name_or_path", str(path))
        tok.init_kwargs["add_bos_token"] = True
        self.bridge = TransformerBridge.boot_transformers(
            str(path), hf_model=hf, tokenizer=tok, device=device, dtype=dtype, hf_config_overrides={"rope_theta": theta}
        )
        if getattr(self.bridge.cfg, "rotary_adjacent_pairs", False):
            raise ValueError(f"{path}: TransformerBridge is set up for adjacent RoPE pairs; workbench needs half-split")
        if abs(float(self.bridge.cfg.rotary_base) - theta) > 1e-6 * theta:
            raise ValueError(
                f"{path}: TransformerBridge runs with theta {self.bridge.cfg.rotary_base}, checkpoint says {theta}"
            )
        self.bridge.eval()

    def lens(self, resid: torch.Tensor) -> torch.Tensor:
        return architectures.softcap_logits(self.bridge.unembed(self.bridge.ln_final(resid)), self.softcap)  # [..., V]

    def _run(self, input_ids, position_ids, specs, want):
        n, b = len(specs), input_ids.shape[0]
        self.check_length(n * b, input_ids.shape[1])
        out: list[dict[str, torch.Tensor]] = [{} for _ in specs]
        ids, pos = input_ids.repeat(n, 1), position_ids.repeat(n, 1)  # [n*B, T] each
        hooks = []

        def rot_hook(layer: int, which: str):
            name = act_name(f"rot_{which}", layer)

            def hook(x, hook):  # x [n*B, T, H, d]
                parts = []
                for c, spec in enumerate(specs):
                    part = x[c * b : (c + 1) * b]  # [B, T, H, d]
                    if touches(spec, which, layer):
                        part = apply_spec(
                            spec, part.transpose(1, 2), which, layer, position_ids, self.geometry
                        ).transpose(1, 2)
                    parts.append(part)
                    if want(name):
                        out[c][name] = part.transpose(1, 2).detach().clone()  # [B, H, T, d]
                return torch.cat(parts, 0)  # [n*B, T, H, d]

            return hook

        def save_hook(name: str):
            def hook(x, hook):  # [n*B, T, D]
                for c in range(n):
                    out[c][name] = x[c * b : (c + 1) * b].detach().clone()  # [B, T, D]
                return x

            return hook

        def pattern_hook(name: str):
            def hook(x, hook):  # [n*B, H, T, T]
                clean = x[:b]  # [B, H, T, T]
                for c in range(n):
                    out[c][name] = js_probs(clean, x[c * b : (c + 1) * b]).mean(1)  # [B, T]
                return x

            return hook

        for i in range(self.geometry.num_layers):
            for which in ("q", "k"):
                if want(act_name(f"rot_{which}", i)) or any(touches(s, which, i) for s in specs):
                    hooks.append((act_name(f"rot_{which}", i, bridge=True), rot_hook(i, which)))
            for kind, make in (("attn_out", save_hook), ("resid_post", save_hook), ("pattern_js", pattern_hook)):
                if want(act_name(kind, i)):
                    hooks.append((act_name(kind, i, bridge=True), make(act_name(kind, i))))
        logits = self.bridge.run_with_hooks(ids, position_ids=pos, return_type="logits", fwd_hooks=hooks)  # [n*B, T, V]
        for c in range(n):
            out[c]["logits"] = logits[c * b : (c + 1) * b]  # [B, T, V]
        return out

    def check_length(self, n_rows: int, length: int) -> None:
        """Refuse, before any work, a run whose eager [rows, heads, T, T] attention would not fit in memory."""
        check_eager_length(self.geometry.num_heads, n_rows, length, dtype=self.dtype, device=self.device)

    def _stream(self, input_ids, position_ids, specs, reduce, want):
        n, b = len(specs), input_ids.shape[0]
        self.check_length(n * b, input_ids.shape[1])
        ids, pos = input_ids.repeat(n, 1), position_ids.repeat(n, 1)  # [n*B, T] each
        geom = self.geometry
        hooks = []

        def rot_hook(layer: int, which: str):
            name = act_name(f"rot_{which}", layer)

            def hook(x, hook):  # x [n*B, T, H, d]
                x = _edit_slices(x.transpose(1, 2), specs, which, layer, position_ids, geom).transpose(1, 2)
                if want(name):
                    reduce(name, x.unflatten(0, (n, b)))  # [n, B, T, H, d]
                return x

            return hook

        def pass_hook(layer: int, kind: str):
            name = act_name(kind, layer)

            def hook(x, hook):  # [n*B, T, ...] or the pattern [n*B, H, T, T_k]
                y = x.unflatten(0, (n, b))  # [n, B, T, ...] or [n, B, H, T, T_k]
                reduce(name, y.transpose(2, 3) if kind == "pattern" else y)  # pattern -> [n, B, T, H, T_k]
                return x

            return hook

        for i in range(geom.num_layers):
            for which in ("q", "k"):
                if want(act_name(f"rot_{which}", i)) or any(touches(s, which, i) for s in specs):
                    hooks.append((act_name(f"rot_{which}", i, bridge=True), rot_hook(i, which)))
            for kind in ("pattern", "attn_out", "resid_post"):
                if want(act_name(kind, i)):
                    hooks.append((act_name(kind, i, bridge=True), pass_hook(i, kind)))
        logits = self.bridge.run_with_hooks(ids, position_ids=pos, return_type="logits", fwd_hooks=hooks)  # [n*B, T, V]
        reduce("logits", logits.unflatten(0, (n, b)))  # [n, B, T, V]


class NNsightBackend(Backend):
    """nnsight ``TransformersModel`` over its own sdpa instance; one invoke per spec in one trace."""

    name = "nnsight"

    def __init__(self, path: str | Path, *, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        from nnsight.modeling.transformers import TransformersModel  # lazy: only the nnsight backend needs nnsight

        self.path, self.device, self.dtype = Path(path), torch.device(device), dtype
        hf, self.manifest = load_hf(path, dtype=dtype, device=device)
        self.geometry = Geometry.of(hf)
        self.vocab_size = hf.config.vocab_size
        self.hf = hf
        self.model = TransformersModel(hf, tokenizer=checkpoints.own_tokenizer(path))

    @property
    def lens_is_output(self) -> bool:
        """Whether the lens of the last block's residual equals the model's logits (final norm + lm_head and
        nothing else: no soft-capping or logit scaling, as in Llama, Mistral, Qwen2/3, Phi-3)."""
        cfg = self.hf.config
        return (
            getattr(cfg, "final_logit_softcapping", None) is None
            and getattr(cfg, "logit_scale", None) is None
            and getattr(cfg, "logits_scaling", None) in (None, 1, 1.0)
            and type(self.hf).__name__.endswith("ForCausalLM")
            and hasattr(self.hf.model, "norm")
        )

    def lens(self, resid: torch.Tensor) -> torch.Tensor:
        # the modules' own forward, past nnsight's hooks: safe inside a trace (Backend.stream); soft-capped (Gemma 2)
        return architectures.lens(self.hf, resid)

    def _run(self, input_ids, position_ids, specs, want):
        out: list[dict[str, torch.Tensor]] = [{} for _ in specs]
        geom = self.geometry
        with self.model.trace() as tracer:
            for c, spec in enumerate(specs):
                with tracer.invoke(input_ids, position_ids=position_ids):
                    for i, layer in enumerate(self.model.model.layers):
                        rq, rk = act_name("rot_q", i), act_name("rot_k", i)
                        edit_q, edit_k = touches(spec, "q", i), touches(spec, "k", i)
                        if edit_q or edit_k or want(rq) or want(rk):
                            rot = layer.self_attn.source.apply_rotary_pos_emb_0
                            q, k = rot.output  # [B, H, T, d], [B, H_kv, T, d]
                            if edit_q or edit_k:
                                if edit_q:
                                    q = apply_spec(spec, q, "q", i, position_ids, geom)  # [B, H, T, d]
                                if edit_k:
                                    k = apply_spec(spec, k, "k", i, position_ids, geom)  # [B, H_kv, T, d]
                                rot.output = (q, k)
                            if want(rq):
                                out[c][rq] = q.detach().clone().save()
                            if want(rk):
                                out[c][rk] = k.detach().clone().save()
                        attn_out, resid = act_name("attn_out", i), act_name("resid_post", i)
                        if want(attn_out):
                            out[c][attn_out] = layer.self_attn.output[0].detach().clone().save()  # [B, T, D]
                        if want(resid):
                            out[c][resid] = layer.output.detach().clone().save()  # [B, T, D]
                    out[c]["logits"] = (
                        architectures.final_logits(self.hf.config, self.model.lm_head.output).detach().clone().save()
                    )  # [B, T, V]
        return [{k: _value(v) for k, v in d.items()} for d in out]

    def _stream(self, input_ids, position_ids, specs, reduce, want):
        # one invoke over the specs stacked along the batch: every intervention sees all specs at once, so
        # statistics against the clean slice are computed inside the forward and nothing is saved
        n, b = len(specs), input_ids.shape[0]
        ids, pos = input_ids.repeat(n, 1), position_ids.repeat(n, 1)  # [n*B, T] each
        geom = self.geometry
        with self.model.trace(ids, position_ids=pos):
            for i, layer in enumerate(self.model.model.layers):
                rq, rk = act_name("rot_q", i), act_name("rot_k", i)
                edit_q = any(touches(s, "q", i) for s in specs)
                edit_k = any(touches(s, "k", i) for s in specs)
                if edit_q or edit_k or want(rq) or want(rk):
                    rot = layer.self_attn.source.apply_rotary_pos_emb_0
                    q, k = rot.output  # [n*B, H, T, d], [n*B, H_kv, T, d]
                    if edit_q or edit_k:
                        q = _edit_slices(q, specs, "q", i, position_ids, geom)  # [n*B, H, T, d]
                        k = _edit_slices(k, specs, "k", i, position_ids, geom)  # [n*B, H_kv, T, d]
                        rot.output = (q, k)
                    if want(rq):
                        reduce(rq, q.unflatten(0, (n, b)).transpose(2, 3))  # [n, B, T, H, d]
                    if want(rk):
                        reduce(rk, k.unflatten(0, (n, b)).transpose(2, 3))  # [n, B, T, H_kv, d]
                attn_out, resid = act_name("attn_out", i), act_name("resid_post", i)
                if want(attn_out):
                    reduce(attn_out, layer.self_attn.output[0].unflatten(0, (n, b)))  # [n, B, T, D]
                if want(resid):
                    reduce(resid, layer.output.unflatten(0, (n, b)))  # [n, B, T, D]
            # final logits [n*B, T, V], handed over as [n, B, T, V]
            reduce("logits", architectures.final_logits(self.hf.config, self.model.lm_head.output).unflatten(0, (n, b)))


def _value(v):
    return getattr(v, "value", v)


class LengthLimitError(ValueError):
    """A run refused before any work because it would not fit in memory."""


def eager_bytes_per_token2(num_heads: int, n_rows: int, dtype: torch.dtype = torch.float32) -> float:
    """Bytes per T^2 of eager attention: 4 live copies of the [rows, H, T, T] scores in the model dtype
    (scores, softmaxed pattern, the temporaries of the trace's pattern-JS statistic) plus the bool and
    additive causal masks [rows, 1, T, T]. Measured on CPU (2 rows, 4 heads, run_trace): peak RSS above idle
    0.12 / 0.45 / 1.72 GiB at 1k / 2k / 4k tokens, about 3.3 copies; the estimate keeps a 1.3x margin."""
    elem = torch.finfo(dtype).bits // 8
    return n_rows * (4 * num_heads * elem + elem + 1)


def eager_attention_bytes(num_heads: int, n_rows: int, length: int, dtype: torch.dtype = torch.float32) -> float:
    """Estimated peak bytes of one eager attention layer over ``n_rows`` x ``length`` tokens."""
    return eager_bytes_per_token2(num_heads, n_rows, dtype) * float(length) ** 2


def check_eager_length(
    num_heads: int,
    n_rows: int,
    length: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    backend: str = "tl",
) -> None:
    """Raise ``LengthLimitError`` when eager attention over ``n_rows`` x ``length`` tokens exceeds the budget."""
    need = eager_attention_bytes(num_heads, n_rows, length, dtype)
    budget = memory_budget(device)
    if need > budget:
        limit = int((budget / eager_bytes_per_token2(num_heads, n_rows, dtype)) ** 0.5)
        raise LengthLimitError(
            f"backend {backend}: {n_rows} rows x {length} tokens needs about {need / 2**30:.1f} GiB for "
            f"TransformerLens' eager attention ([rows, {num_heads} heads, T, T] scores, pattern and its statistics), "
            f"over the budget of {budget / 2**30:.1f} GiB ({budget_source(device)}): at most {limit} tokens for "
            f"{n_rows} rows. Use --backend nnsight (sdpa attention, memory linear in length), fewer rows "
            f"(--batch-size, fewer specs) or a shorter --length."
        )


def load_backend(path: str | Path, backend: str = "nnsight", **kw) -> Backend:
    """Open ``path`` in the named backend (``nnsight`` or ``tl``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return (NNsightBackend if backend == "nnsight" else TransformerLensBackend)(path, **kw)


def plain_hf_logits(
    path: str | Path,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str = "cpu",
) -> torch.Tensor:
    """Logits of plain transformers (a fresh instance on ``device``, no project hooks): the reference for
    sanity checks."""
    hf, _ = load_hf(path, attn_implementation=attn_implementation, dtype=dtype, device=device)
    with torch.no_grad():
        return hf(
            input_ids=torch.as_tensor(input_ids, device=device),
            position_ids=torch.as_tensor(position_ids, device=device),
        ).logits

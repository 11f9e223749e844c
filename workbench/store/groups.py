"""The group registry, layer 5 of the store: every kind of result, how it grows, one write and one refusal.

Every group is registered (:data:`GROUPS`, constants such as :data:`TRACES`, :data:`RETRIEVAL`): its name,
how it grows (an append dim, grid dims, a derived summary replaced as a whole, or written once), its chunks
and its section in docs/store-schema.md. Packages write with :func:`save` and refuse before any work with
:func:`refuse`, both driven by the registry, on top of the layers below (append transactions, grid writes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from workbench.store.grid import check_grid, chunk_encoding, write_grid
from workbench.store.schema import StoreError, check_schema, decode_attr, has_group
from workbench.store.transactions import MARKER, open_group, replace_group, write


@dataclass(frozen=True)
class Group:
    """One kind of result in a store: how it grows, and where ``docs/store-schema.md`` describes it.

    Exactly one of: ``append`` (grows along that dim; a label is written once), ``grid`` (written cell by
    cell over those dims, see :func:`write_grid`), ``derived`` (a summary recomputed from other groups and
    replaced on every write), or none of them (written once)."""

    name: str
    section: str  # heading of its section in docs/store-schema.md
    append: str | None = None
    grid: tuple[str, ...] = ()
    derived: bool = False
    chunk_dims: tuple[str, ...] | None = None  # one chunk per entry of these dims (default: zarr's)
    compress: bool = True
    keep_attrs: bool = False  # an append keeps the first write's group attrs (else they become the new data's)
    merge_attrs: tuple[str, ...] = ()  # JSON name -> value attrs merged over every append
    same_attrs: tuple[str, ...] = ()  # attrs an append must share with the group (one group, one setting)
    varying: tuple[str, ...] = ()  # entry-free coordinates that may differ between appends (kept as first)


GROUPS: dict[str, Group] = {}


def _register(group: Group) -> str:
    GROUPS[group.name] = group
    return group.name


_INTERP = "Traces, repeated tokens, activations"
_PAIRS = "Per-RoPE-pair analysis"
_DERIVED = "Derived summaries"
_PAIR_GROUP = dict(section=_PAIRS, keep_attrs=True, varying=("wavelength",))
TRACES = _register(Group("traces", _INTERP, grid=("checkpoint", "spec")))
REPEATED_TOKENS = _register(Group("repeated_tokens", _INTERP, grid=("checkpoint", "spec")))
ACTIVATIONS = _register(
    Group(
        "activations", _INTERP, grid=("checkpoint", "spec"), chunk_dims=("checkpoint", "spec", "layer"), compress=False
    )
)
UPDATES_WEIGHTS = _register(
    Group("updates_weights", append="comparison", chunk_dims=("comparison", "layer"), **_PAIR_GROUP)
)
UPDATES_STATES = _register(
    Group("updates_states", append="comparison", chunk_dims=("comparison", "layer"), **_PAIR_GROUP)
)
BANDS = _register(Group("bands", append="comparison", chunk_dims=("comparison", "layer"), **_PAIR_GROUP))
SCORE_DECOMPOSITION = _register(
    Group("score_decomposition", append="checkpoint", chunk_dims=("checkpoint", "layer"), **_PAIR_GROUP)
)
PROBES = _register(Group("probes", append="checkpoint", chunk_dims=("checkpoint", "layer"), **_PAIR_GROUP))
RETRIEVAL = _register(
    Group("retrieval", "Retrieval", append="checkpoint", merge_attrs=("checkpoint_hashes", "rope_theta"))
)
KD_SIGNAL = _register(
    Group(
        "kd_signal",
        "Cross-document KD signal",
        append="checkpoint",
        merge_attrs=("checkpoint_hashes",),
        same_attrs=("data_hash", "seq_len", "n_windows", "seed", "summary_tokens", "token_kinds", "kept_tokens"),
    )
)
POSITION_LOSS = _register(
    Group(
        "position_loss",
        "Loss and KL by position",
        append="checkpoint",
        merge_attrs=("checkpoint_hashes",),
        same_attrs=("data_hash", "teacher_hash", "edges"),
    )
)
ABLATIONS = _register(Group("ablations", _DERIVED))
ARM_RETRIEVAL = _register(Group("arm_retrieval", _DERIVED, derived=True))
ARM_COMPARISONS = _register(Group("arm_comparisons", _DERIVED, derived=True))
ARM_UPDATES = _register(Group("arm_updates", _DERIVED, derived=True))
ARM_BANDS = _register(Group("arm_bands", _DERIVED, derived=True))
ARM_EFFECTIVE_LENGTH = _register(Group("arm_effective_length", _DERIVED, derived=True))
ABLATION_EFFECTS = _register(Group("ablation_effects", _DERIVED, derived=True))


def group_spec(group: str) -> Group:
    """The registered :class:`Group` of a name (ValueError naming the known ones otherwise)."""
    try:
        return GROUPS[group]
    except KeyError:
        raise ValueError(f"unknown store group {group!r}; known: {', '.join(GROUPS)}") from None


def written_labels(store: str | Path, group: str) -> set[str]:
    """Labels already written along an append group's dim (empty when the store or the group does not exist)."""
    spec = group_spec(group)
    if not has_group(store, group):
        return set()
    return set(map(str, open_group(store, group)[spec.append].values))


def _same_values(a: Any, b: Any) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" and b.dtype.kind in "fc":
        return bool(np.allclose(a, b, equal_nan=True))
    if a.dtype.kind in "iuf" and b.dtype.kind in "iuf":
        return bool(np.array_equal(a, b))
    return list(map(str, a.ravel())) == list(map(str, b.ravel()))


def refuse(
    store: str | Path,
    group: str,
    ds: xr.Dataset | None = None,
    *,
    labels: Iterable[str] | None = None,
    cells: Mapping[str, Iterable[Any]] | None = None,
    spec_hash: Iterable[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> None:
    """Raise StoreError, before any work, for a write :func:`save` would refuse: a foreign store; for an
    append group, ``labels`` already written (with ``ds``: its labels), ``attrs`` that differ from the
    group's ``same_attrs``, and with ``ds`` also other labels along the other dims or other entry-free
    variables than stored; for a grid group, ``cells`` (grid dim -> values) already written or spec
    name/definition clashes (:func:`check_grid`); a write-once group that exists."""
    _refuse(store, group, ds, labels=labels, cells=cells, spec_hash=spec_hash, attrs=attrs)
    from workbench import writable  # (tiny module; here so every writer's preflight probes the location)

    writable.probe(store)  # a read-only / full / forbidden store location: one line now, not after the work


def _refuse(
    store: str | Path,
    group: str,
    ds: xr.Dataset | None = None,
    *,
    labels: Iterable[str] | None = None,
    cells: Mapping[str, Iterable[Any]] | None = None,
    spec_hash: Iterable[str] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset | None:
    """:func:`refuse`; returns the stored group it checked against (an existing append group), else None."""
    spec = group_spec(group)
    store = Path(store)
    where = f"{store}/{group}"
    if store.exists():
        check_schema(store)  # a foreign store (another schema, not Zarr) is refused up front
    if not has_group(store, group):
        return None
    if spec.grid:
        if cells is None and ds is not None:
            cells = {d: list(ds[d].values) for d in spec.grid}
            spec_hash = list(ds["spec_hash"].values) if "spec_hash" in ds.coords else spec_hash
        if cells is not None:
            check_grid(store, group, cells, spec_hash)
        return None
    if spec.derived:
        return None
    if spec.append is None:
        raise StoreError(f"{where}: already written; refusing to write it twice (use another --out store)")
    old = open_group(store, group)
    dim = spec.append
    if labels is None and ds is not None:
        labels = map(str, ds[dim].values)
    clash = sorted(set(map(str, old[dim].values)) & set(map(str, labels or ())))
    if clash:
        raise StoreError(
            f"{where}: {dim} {clash} already written; refusing to write it twice (use another --out store)"
        )
    attrs = ds.attrs if attrs is None and ds is not None else attrs
    for key in spec.same_attrs:
        if attrs is not None and key in attrs and key in old.attrs and str(old.attrs[key]) != str(attrs[key]):
            raise StoreError(
                f"{where}: written with {key}={old.attrs[key]!r}, this run has {key}={attrs[key]!r}; "
                "one group holds one setting (use another --out store)"
            )
    if ds is None:
        return old
    for name in ds.dims:
        if name != dim and name in old.coords and name in ds.coords and not _same_values(old[name], ds[name]):
            raise StoreError(
                f"{where}: {name} labels {list(map(str, ds[name].values))} differ from the store's "
                f"{list(map(str, old[name].values))}; one group holds one setting (use another --out store)"
            )
    for name in ds.variables:
        if name in ds.dims or dim in ds[name].dims or name in spec.varying or name not in old.variables:
            continue
        if not _same_values(old[name].values, ds[name].values):
            raise StoreError(
                f"{where}: {name} differs from the store's (the group was written with another "
                "setting); one group holds one setting (use another --out store)"
            )
    return old


def save(store: str | Path, group: str, ds: xr.Dataset) -> Path:
    """Write ``ds`` as the registered ``group`` of ``store``, the way its :class:`Group` says: the first
    write creates it; an append group then grows along its dim (variables without that dim and, where the
    group keeps them, the attrs stay as first written; ``merge_attrs`` are merged); a grid group is written
    cell by cell (:func:`write_grid`); a derived summary replaces the earlier one (built under a temporary
    name, then swapped in by renames). Everything :func:`refuse` refuses is refused before anything is written."""
    spec = group_spec(group)
    store = Path(store)
    if spec.grid:
        return write_grid(store, group, ds, grid=spec.grid, chunk_dims=spec.chunk_dims, compress=spec.compress)
    if spec.derived:
        return replace_group(store, group, ds)
    encoding = chunk_encoding(ds, spec.chunk_dims) if spec.chunk_dims else None
    old = _refuse(store, group, ds)
    if old is None:
        return write(store, group, ds, encoding=encoding)
    dim = spec.append
    fixed = [n for n in ds.coords if n not in ds.dims and dim not in ds[n].dims]
    new = ds.drop_vars(fixed + [n for n in ds.dims if n != dim and n in ds.coords])
    new.attrs = dict(old.attrs) if spec.keep_attrs else dict(ds.attrs)
    new.attrs.pop(MARKER, None)
    for key in spec.merge_attrs:
        new.attrs[key] = json.dumps(
            {**(decode_attr(old.attrs.get(key)) or {}), **(decode_attr(ds.attrs.get(key)) or {})}
        )
    return write(store, group, new, append_dim=dim)

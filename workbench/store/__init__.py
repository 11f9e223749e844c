"""The results store: xarray Datasets in a Zarr v3 directory, one group per kind of result.

A store opens with plain xarray and no project code::

    xr.open_zarr("runs/demo/results.zarr", group="retrieval", consolidated=False)

Layout: the root group carries ``attrs["schema"] == SCHEMA``; each result kind lives in its own group
(``retrieval``, ``traces``, ``repeated_tokens``, ``updates_weights``, ``updates_states``, ``bands``,
``score_decomposition``, ``probes``, ``activations`` ...). Groups use named dims (``checkpoint``,
``condition``, ``spec``, ``layer``, ``head``, ``kv_head``, ``pair``, ``position``, ``length``, ``depth``,
``sample``, ``task`` ...). The ``pair`` dim always carries the coordinates ``wavelength`` (tokens, at the
theta of record) and ``dims`` ("j,j+d/2"). Every group has provenance attrs (see :func:`provenance`).
A store of another schema is refused in one line (rerun the command that wrote it).

Writes are incremental: the first write creates a group, later writes append along one dim (new
checkpoints, specs, conditions). Writing a coordinate value that is already there is refused, and nothing
already written is overwritten. String coordinates are stored as object dtype so appends work.

This package is the public face; callers use ``from workbench import store`` and the names below. The layers,
each importing only the ones above it in this list (docs/store-schema.md, "The code, in layers"):

1. :mod:`~workbench.store.schema`: the schema, the root check, pair coordinates, provenance attrs;
2. :mod:`~workbench.store.zarr_bytes`: Zarr v3 metadata and chunk files written lean (the only module on
   zarr's and xarray's private APIs);
3. :mod:`~workbench.store.transactions`: the writers' lock, the write-in-progress marker, repair, the
   readers' view (:func:`open_group`), appends (:func:`write`);
4. :mod:`~workbench.store.grid`: cell-by-cell grid writes (:func:`write_grid`, :func:`check_grid`);
5. :mod:`~workbench.store.groups`: the registry of groups (:data:`GROUPS`) with :func:`save` and :func:`refuse`.
"""

from workbench.store.grid import check_grid, chunk_encoding, write_grid, written_cells
from workbench.store.groups import (
    ABLATION_EFFECTS,
    ABLATIONS,
    ACTIVATIONS,
    ARM_BANDS,
    ARM_COMPARISONS,
    ARM_EFFECTIVE_LENGTH,
    ARM_RETRIEVAL,
    ARM_UPDATES,
    BANDS,
    GROUPS,
    KD_SIGNAL,
    POSITION_LOSS,
    PROBES,
    REPEATED_TOKENS,
    RETRIEVAL,
    SCORE_DECOMPOSITION,
    TRACES,
    UPDATES_STATES,
    UPDATES_WEIGHTS,
    Group,
    group_spec,
    refuse,
    save,
    written_labels,
)
from workbench.store.schema import (
    SCHEMA,
    WRITTEN,
    StoreError,
    check_schema,
    decode_attr,
    groups,
    has_group,
    pair_coords,
    provenance,
    stack_checkpoints,
)
from workbench.store.transactions import KILL_ENV, LOCK_TIMEOUT_S, MARKER, open_group, write

__all__ = [
    "ABLATIONS",
    "ABLATION_EFFECTS",
    "ACTIVATIONS",
    "ARM_BANDS",
    "ARM_COMPARISONS",
    "ARM_EFFECTIVE_LENGTH",
    "ARM_RETRIEVAL",
    "ARM_UPDATES",
    "BANDS",
    "GROUPS",
    "KD_SIGNAL",
    "KILL_ENV",
    "LOCK_TIMEOUT_S",
    "MARKER",
    "POSITION_LOSS",
    "PROBES",
    "REPEATED_TOKENS",
    "RETRIEVAL",
    "SCHEMA",
    "SCORE_DECOMPOSITION",
    "TRACES",
    "UPDATES_STATES",
    "UPDATES_WEIGHTS",
    "WRITTEN",
    "Group",
    "StoreError",
    "check_grid",
    "check_schema",
    "chunk_encoding",
    "decode_attr",
    "group_spec",
    "groups",
    "has_group",
    "open_group",
    "pair_coords",
    "provenance",
    "refuse",
    "save",
    "stack_checkpoints",
    "write",
    "write_grid",
    "written_cells",
    "written_labels",
]

"""The store's format, layer 1 of the store: the schema name, the on-disk names every layer shares, the root
check, and the helpers writers use to build Datasets (pair coordinates, provenance attrs).

Reading a store starts here: its root ``zarr.json`` must carry ``attrs["schema"] == SCHEMA``. A store of any
other schema (an older ``workbench-store/1`` or ``/2``, or a foreign Zarr store) is refused with one line that
says which schema it is and to rerun the command that wrote it; there is no conversion (nothing before 1.0 is
kept compatible). Nothing here writes: creating a store is a transaction (:mod:`workbench.store.transactions`).
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

import workbench

SCHEMA = "workbench-store/3"
WRITTEN = "cell_written"  # int8 over a grid group's grid dims: 1 where that cell has been written
TMP_PREFIX = ".tmp-"  # hidden temp names of writes under way (a killed writer's are removed by the next one)


class StoreError(ValueError):
    """A store of another schema, a duplicate write or an unknown group."""


def pair_coords(wavelengths: Sequence[float]) -> dict[str, Any]:
    """Coordinates for the ``pair`` dim from each pair's wavelength as the model runs (its theta and RoPE
    scaling: ``checkpoints.Info.wavelengths``): index j, the wavelength, and the pair's two dims."""
    half = len(wavelengths)
    return {
        "pair": np.arange(half),
        "wavelength": ("pair", np.asarray(wavelengths, dtype=np.float64)),
        "dims": ("pair", np.array([f"{j},{j + half}" for j in range(half)], dtype=object)),
    }


def provenance(**extra: Any) -> dict[str, Any]:
    """Attrs every group carries: schema, time, library versions, plus what the writer adds
    (checkpoint hashes, theta, dtype, spec JSON ...). Non-scalar values are stored as JSON strings."""
    import torch  # lazy: reading a store (the app, figures) needs neither torch nor transformers
    import transformers

    attrs: dict[str, Any] = {
        "schema": SCHEMA,
        "written": _dt.datetime.now(_dt.UTC).isoformat(),
        "versions": json.dumps(
            {
                "workbench": workbench.__version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "xarray": xr.__version__,
                "zarr": zarr.__version__,
            }
        ),
    }
    for key, value in extra.items():
        attrs[key] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value, default=str)
    return attrs


def objectify(ds: xr.Dataset) -> xr.Dataset:
    """Fixed-width unicode coords/vars break Zarr appends; store strings as object dtype."""
    for name in list(ds.variables):
        if ds[name].dtype.kind == "U":
            ds[name] = ds[name].astype(object)
    return ds


def root_doc(store: Path) -> dict[str, Any]:
    """The root ``zarr.json`` of a store (read directly: no zarr round trips on the write path)."""
    try:
        doc = json.loads((store / "zarr.json").read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{store}: not a Zarr store ({type(exc).__name__}: {exc})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise StoreError(f"{store}: not a Zarr v3 group")
    return doc


def check_schema(store: str | Path) -> None:
    """Refuse, in one line, a store that is missing or not of this schema (before any work)."""
    store = Path(store)
    if not store.exists():
        raise StoreError(f"{store}: store not found")
    schema = (root_doc(store).get("attributes") or {}).get("schema")
    if schema != SCHEMA:
        raise StoreError(
            f"{store}: store schema is {schema!r}; this version of the workbench reads and writes only {SCHEMA!r}: "
            "rerun the command that wrote it, into a new store"
        )


def groups(store: str | Path) -> list[str]:
    """Names of the result groups in a store."""
    store = Path(store)
    check_schema(store)
    root = zarr.open_group(str(store), mode="r")
    return sorted(name for name, _ in root.groups() if not name.startswith("."))


def has_group(store: str | Path, group: str) -> bool:
    store = Path(store)
    return store.exists() and group in groups(store)


def decode_attr(value: Any) -> Any:
    """Inverse of the JSON encoding :func:`provenance` applies to non-scalar attrs."""
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def stack_checkpoints(datasets: Iterable[xr.Dataset], names: Iterable[str]) -> xr.Dataset:
    """Concatenate per-checkpoint Datasets along a new ``checkpoint`` dim with object-dtype names."""
    return xr.concat(list(datasets), dim=xr.DataArray(np.array(list(names), dtype=object), dims="checkpoint"))

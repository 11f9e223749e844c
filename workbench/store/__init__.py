"""The results store (being split into layers: see the next commit)."""

from workbench.store.zarr_bytes import *  # noqa: F403
from workbench.store.zarr_bytes import _lock, _objectify  # noqa: F401 (tests)

"""Deprecated old name of :mod:`workbench.measurements`; importing it warns once."""

from workbench._moved import alias

alias(
    __name__,
    "workbench.measurements",
    {m: f"workbench.measurements.{m}" for m in ("bands", "capture", "probes", "scores", "states", "weights")}
    | {"pairs": "workbench.pair_updates"},
)

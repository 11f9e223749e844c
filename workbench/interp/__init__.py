"""Deprecated old name of :mod:`workbench.interventions` (the cross-document KD signal moved to
:mod:`workbench.measurements.cross_document`); importing it warns once."""

from workbench._moved import alias

alias(
    __name__,
    "workbench.interventions",
    {
        **{
            m: f"workbench.interventions.{m}"
            for m in ("activations", "backends", "perturb", "repeated", "sanity", "specs", "traces")
        },
        "cross_document": "workbench.measurements.cross_document",
    },
)

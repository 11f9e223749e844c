"""Old names that keep working for one version: renamed keyword arguments (:func:`keyword`) and packages.

Packages: ``workbench.interp`` is now
``workbench.interventions`` and ``workbench.analysis`` is ``workbench.measurements`` (docs/glossary.md).

Importing an old name warns once (FutureWarning, shown by default) and makes the old package and each of
its old submodules the new module objects, so ``from workbench.interp.specs import Spec`` and
``from workbench import analysis; analysis.weight_updates(...)`` run the new code unchanged.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType
from typing import Any


def keyword(new_value: Any, old_value: Any, old: str, new: str, where: str) -> Any:
    """The value of a renamed keyword argument: ``new_value``, or, when the caller still passes the old
    keyword (``old_value`` not None), that one with one FutureWarning."""
    if old_value is None:
        return new_value
    warnings.warn(
        f"{where}({old}=) is deprecated, use {new}= (renamed; the old keyword goes in the next version)",
        FutureWarning,
        stacklevel=3,
    )
    return old_value


def alias(old: str, new: str, submodules: dict[str, str]) -> ModuleType:
    """Make ``old`` and ``old.<name>`` (for each ``name -> new module``) the new modules; return ``new``."""
    warnings.warn(
        f"{old} is deprecated, use {new} (renamed; the old name goes in the next version)", FutureWarning, stacklevel=3
    )
    package = importlib.import_module(new)
    for name, target in submodules.items():
        module = importlib.import_module(target)
        sys.modules[f"{old}.{name}"] = module
        setattr(package, name, module)
    sys.modules[old] = package
    return package

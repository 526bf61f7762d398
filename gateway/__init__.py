"""``gateway``: the former name of the ``intentgate`` package, kept for one release.

``import gateway.verify`` (and any other ``gateway.X``) gives the very module
``intentgate.X``, not a copy, with a :class:`DeprecationWarning`; ``gateway.Name`` is
``intentgate.Name``.  Import ``intentgate`` instead: this alias goes in the next release.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

import intentgate

warnings.warn("the 'gateway' package is now 'intentgate': import intentgate instead (this alias goes in the "
              "next release)", DeprecationWarning, stacklevel=2)

_PREFIX = __name__ + "."


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``gateway.X`` and loads it as the module ``intentgate.X`` itself."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PREFIX):
            return None
        real = importlib.import_module("intentgate." + fullname[len(_PREFIX):])
        return importlib.machinery.ModuleSpec(fullname, self, is_package=hasattr(real, "__path__"),
                                              loader_state=(real, real.__spec__))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return spec.loader_state[0]  # type: ignore[index,no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = module.__spec__.loader_state[1]  # type: ignore[union-attr]  # its own, not the alias's


sys.meta_path.insert(0, _Alias())


def __getattr__(name: str) -> Any:
    return getattr(intentgate, name)


__all__ = list(intentgate.__all__)
__version__ = intentgate.__version__

"""Model kinds (``services.kinds.base.Kind``): one module per kind, each registering its class.

Every module of this package is imported here, so a new kind is one new file (and the catalog
entries or imported models that name it).
"""

import importlib
import pkgutil

from services.kinds.base import Call, Kind, Port
from services.kinds.registry import KINDS, kind_for

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["KINDS", "Call", "Kind", "Port", "kind_for"]

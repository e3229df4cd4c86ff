"""Family name -> Family. Every module in `trainables/families/` with a `FAMILY` is one."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from trainables import families as families_package
from trainables.errors import ConfigError
from trainables.family import Family


@cache
def all_families() -> dict[str, Family]:
    found: dict[str, Family] = {}
    for module_info in sorted(
        pkgutil.iter_modules(families_package.__path__), key=lambda m: m.name
    ):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{families_package.__name__}.{module_info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found[family.name] = family
    return found


def get_family(name: str) -> Family:
    known = all_families()
    if name not in known:
        raise ConfigError(f"family: unknown family {name!r}; choose one of {', '.join(known)}")
    return known[name]

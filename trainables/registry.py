"""Family name -> Family. Every module in `trainables/families/` whose `FAMILY` is a
`Family` instance is one, so adding a family is adding its module."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from trainables import families as families_package
from trainables.errors import ConfigError, ContractError
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
            if family.name in found:
                raise ContractError(
                    f"{module.__name__}: family name {family.name!r} is taken by "
                    f"{type(found[family.name]).__module__}"
                )
            found[family.name] = family
    return found


def get_family(name: str) -> Family:
    known = all_families()
    if name not in known:
        raise ConfigError(f"family: unknown family {name!r}; choose one of {', '.join(known)}")
    return known[name]

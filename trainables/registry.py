"""Family name -> Family, from three places:

- built in: every module in `trainables/families/` whose `FAMILY` is a `Family`;
- installed: the entry points of the group `latent_studies.families` that any installed
  distribution declares (`conv_vae = "conv_vae.family:FAMILY"` in its pyproject.toml), the
  way pytest finds its plugins;
- named: modules listed in $LATENT_STUDIES_FAMILY_MODULES (what `--family-module` sets),
  for a family that is not installed. The variable, not a call, is the record: Ray
  workers and the contract suite's pytest inherit it.

A family's default search space lies beside its module as `<name>.yaml`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import pkgutil
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from trainables import families as families_package
from trainables.errors import ConfigError, ContractError
from trainables.family import Family

ENTRY_POINT_GROUP = "latent_studies.families"
FAMILY_MODULES_ENV = "LATENT_STUDIES_FAMILY_MODULES"
BUILT_IN = "built in"
# The families the contract suite (trainables/contract.py) runs on, comma-separated, when
# not all: what `study check-family` sets.
CONTRACT_FAMILIES_ENV = "LATENT_STUDIES_CONTRACT_FAMILIES"


@dataclass(frozen=True)
class Registered:
    family: Family
    # "built in", "<distribution> <version> (entry point)" or "module <name>" (named by
    # --family-module or $LATENT_STUDIES_FAMILY_MODULES)
    origin: str
    module: str  # the module that defines FAMILY

    @property
    def builtin(self) -> bool:
        return self.origin == BUILT_IN

    @property
    def space_path(self) -> Path | None:
        """The default search space shipped beside the family's module, when there is one."""
        module = sys.modules.get(self.module)
        where = getattr(module, "__file__", None)
        if where is None:
            return None
        path = Path(where).parent / f"{self.family.name}.yaml"
        return path if path.exists() else None


@dataclass(frozen=True)
class BrokenPlugin:
    """An entry point that did not load: `study families` shows it, other families work."""

    name: str
    origin: str
    error: str


def all_families() -> dict[str, Family]:
    return {name: entry.family for name, entry in registered().items()}


def builtin_families() -> dict[str, Family]:
    return {name: entry.family for name, entry in registered().items() if entry.builtin}


def get_family(name: str) -> Family:
    return registered_family(name).family


def registered_family(name: str) -> Registered:
    known = registered()
    if name in known:
        return known[name]
    broken = {plugin.name: plugin for plugin in broken_plugins()}
    if name in broken:
        raise ConfigError(f"family: {broken[name].error}")
    raise ConfigError(f"family: unknown family {name!r}; choose one of {', '.join(known)}")


def registered() -> dict[str, Registered]:
    return _registered(os.environ.get(FAMILY_MODULES_ENV, ""))


def broken_plugins() -> tuple[BrokenPlugin, ...]:
    return _entry_point_families()[1]


def add_family_module(module_name: str) -> Registered:
    """Load the family that `module_name` defines (its `FAMILY`) and register it for this
    process and every process it starts (Ray workers, pytest)."""
    family = _family_of(load_family_module(module_name), module_name, "family-module")
    before = os.environ.get(FAMILY_MODULES_ENV, "")
    names = [m for m in before.split(",") if m]
    if module_name not in names:
        os.environ[FAMILY_MODULES_ENV] = ",".join([*names, module_name])
    try:
        entry = registered()[family.name]
    except Exception:  # a family that cannot register must not stay on the record
        os.environ[FAMILY_MODULES_ENV] = before
        raise
    if entry.family is not family:  # another module registered the name first
        raise ContractError(
            f"family-module: {module_name} defines family {family.name!r}, which "
            f"{entry.module} ({entry.origin}) already defines; rename one of them"
        )
    return entry


def load_family_module(module_name: str) -> types.ModuleType:
    """Import `module_name`, also from the working directory, as `python -m` would."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"family-module: cannot import {module_name!r} ({error}); give a module path "
            f"such as mypackage.family, importable from this directory or installed"
        ) from None


def module_location(module_name: str) -> Path:
    """The file or directory that holds `module_name`'s top-level package: what Ray's
    runtime_env `py_modules` ships to the workers."""
    top = importlib.import_module(module_name.partition(".")[0])
    if getattr(top, "__file__", None) and Path(top.__file__).name != "__init__.py":
        return Path(top.__file__)  # a single-file module
    return Path(list(top.__path__)[0])


@cache
def _registered(named_modules: str) -> dict[str, Registered]:
    found: dict[str, Registered] = {}
    for module_info in sorted(
        pkgutil.iter_modules(families_package.__path__), key=lambda m: m.name
    ):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{families_package.__name__}.{module_info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            _add(found, Registered(family, BUILT_IN, module.__name__))
    for entry in _entry_point_families()[0]:
        _add(found, entry)
    for module_name in filter(None, named_modules.split(",")):
        family = _family_of(load_family_module(module_name), module_name, "family-module")
        _add(found, Registered(family, f"module {module_name}", module_name))
    return found


def _add(found: dict[str, Registered], entry: Registered) -> None:
    name = entry.family.name
    if name in found and found[name].family is not entry.family:
        raise ContractError(
            f"{entry.module}: family name {name!r} is taken by {found[name].module} "
            f"({found[name].origin}); rename one of them"
        )
    found.setdefault(name, entry)


@cache
def _entry_point_families() -> tuple[tuple[Registered, ...], tuple[BrokenPlugin, ...]]:
    loaded, broken = [], []
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = point.dist
        origin = (
            f"{distribution.name} {distribution.version} (entry point)"
            if distribution is not None
            else f"{point.value} (entry point)"
        )
        try:
            target = point.load()
            family = _family_of(target, point.value, f"entry point {point.name!r}")
        except Exception as error:  # a plugin's import can fail in any way
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            broken.append(
                BrokenPlugin(
                    point.name,
                    origin,
                    f"the plugin {point.name!r} of {origin} does not load ({reason}); "
                    f"fix or reinstall that package",
                )
            )
            continue
        if family.name != point.name:
            broken.append(
                BrokenPlugin(
                    point.name,
                    origin,
                    f"the entry point {point.name!r} of {origin} names family "
                    f"{family.name!r}; name the entry point after the family",
                )
            )
            continue
        loaded.append(Registered(family, origin, type(family).__module__))
    return tuple(loaded), tuple(broken)


def _family_of(target: object, where: str, how: str) -> Family:
    """The Family an entry point or module gives: the object itself, or a module's FAMILY."""
    family = getattr(target, "FAMILY", None) if isinstance(target, types.ModuleType) else target
    if not isinstance(family, Family):
        # The user named it (--family-module, an entry point's value): bad input.
        raise ConfigError(
            f"{how}: {where} gives {type(family).__name__}, not a Family; end the module with "
            f"FAMILY = YourFamily() (a subclass of trainables.family.Family)"
        )
    return family

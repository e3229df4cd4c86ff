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
import re
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from trainables import families as families_package
from trainables.errors import ConfigError, ContractError, first_line
from trainables.family import Family

ENTRY_POINT_GROUP = "latent_studies.families"
FAMILY_MODULES_ENV = "LATENT_STUDIES_FAMILY_MODULES"
BUILT_IN = "built in"


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
    def space_beside_module(self) -> Path | None:
        """Where a plugin's default search space belongs: `<name>.yaml` beside its module."""
        where = getattr(sys.modules.get(self.module), "__file__", None)
        return None if where is None else Path(where).parent / f"{self.family.name}.yaml"


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
        return registered()[family.name]
    except Exception:  # a family that cannot register must not stay on the record
        os.environ[FAMILY_MODULES_ENV] = before
        raise


def load_family_module(module_name: str) -> types.ModuleType:
    """Import `module_name`, also from the working directory (searched after the
    installed packages, so a file there cannot shadow one of them)."""
    if not MODULE_NAME.match(module_name):
        raise ConfigError(
            f"family-module: {module_name!r} is not a module path; write it as Python "
            f"imports it, such as mypackage.family"
        )
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name != missing and not module_name.startswith(missing + "."):
            fix = f"it imports {missing}, which is not installed here; install it"
        else:
            fix = (
                "give a module path such as mypackage.family, importable from this "
                "directory or installed"
            )
        raise ConfigError(
            f"family-module: cannot import {module_name!r} ({error}); {fix}"
        ) from None
    except Exception as error:  # noqa: BLE001 - the author's code may raise anything
        raise ConfigError(
            f"family-module: importing {module_name} raised {type(error).__name__}: "
            f"{first_line(error)}; fix the module (python -c 'import {module_name}' shows "
            f"the traceback)"
        ) from None


def module_location(module_name: str) -> Path:
    """The file or directory that holds `module_name`'s top-level package: what Ray's
    runtime_env `py_modules` ships to the workers."""
    top = importlib.import_module(module_name.partition(".")[0])
    if getattr(top, "__file__", None) and Path(top.__file__).name != "__init__.py":
        return Path(top.__file__)  # a single-file module
    return Path(list(top.__path__)[0])


MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


@cache
def _builtin() -> dict[str, Registered]:
    found: dict[str, Registered] = {}
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
                    f"{found[family.name].module}"
                )
            found[family.name] = Registered(family, BUILT_IN, module.__name__)
    return found


@cache
def _registered(named_modules: str) -> dict[str, Registered]:
    found = {**_builtin(), **{e.family.name: e for e in _entry_point_families()[0]}}
    for module_name in filter(None, named_modules.split(",")):
        module = load_family_module(module_name)
        family = _family_of(module, module_name, "family-module")
        taken = found.get(family.name)
        if taken is not None and taken.family is not family:
            raise ConfigError(
                f"family-module: {module_name} defines family {family.name!r}, which "
                f"{taken.module} ({taken.origin}) defines already; rename yours"
            )
        found[family.name] = Registered(family, f"module {module_name}", module_name)
    return found


@cache
def _entry_point_families() -> tuple[tuple[Registered, ...], tuple[BrokenPlugin, ...]]:
    """Every installed plugin: loaded, or broken (it does not import, gives no Family, is
    named after another family, or takes a name already taken). One broken plugin leaves
    the others, and every built-in family, working."""
    loaded: dict[str, Registered] = {}
    broken = []
    builtin = _builtin()
    for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = point.dist
        origin = (
            f"{distribution.name} {distribution.version} (entry point)"
            if distribution is not None
            else f"{point.value} (entry point)"
        )
        try:
            family = _family_of(point.load(), point.value, f"entry point {point.name!r}")
        except Exception as error:  # noqa: BLE001 - a plugin's import can fail in any way
            problem = f"does not load ({first_line(error)}); fix or reinstall that package"
        else:
            taken = builtin.get(family.name) or loaded.get(family.name)
            if family.name != point.name:
                problem = f"names family {family.name!r}; name the entry point after the family"
            elif taken is not None:
                problem = (
                    f"defines family {family.name!r}, which {taken.module} ({taken.origin}) "
                    f"defines already; uninstall one of them"
                )
            else:
                loaded[family.name] = Registered(family, origin, point.module)
                continue
        broken.append(
            BrokenPlugin(point.name, origin, f"the plugin {point.name!r} of {origin} {problem}")
        )
    return tuple(loaded.values()), tuple(broken)


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

"""Reading YAML and writing directories, the way every command does it: a YAML file that
cannot be read is one line naming the file and the fix, and an output directory appears
whole or not at all. Standard library and PyYAML only."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from trainables.errors import ConfigError


def read_yaml(
    path: str | Path, what: str = "config", fix: str = "check the path"
) -> dict[str, Any]:
    """A YAML file's mapping, read with `safe_load`. Every failure is a ConfigError whose
    message starts with `what` (the field or flag that named the file)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{what}: cannot read {path} ({error.strerror}); {fix}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        if isinstance(error, yaml.constructor.ConstructorError):
            # safe_load refuses tags like !!python/object/apply, which would run code.
            raise ConfigError(
                f"{what}: {path}{where} has a YAML tag that is not plain data "
                f"({error.problem}); remove the tag"
            ) from None
        raise ConfigError(f"{what}: {path} is not valid YAML{where}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what}: {path} must hold a mapping of keys to values, not {type(data).__name__}"
        )
    return data


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `out_dir`; when the block succeeds, it
    replaces `out_dir` (any old one is removed only then), and when it fails it is removed,
    so readers never see a half-written directory and a failure keeps the old one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
        staging.rename(out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

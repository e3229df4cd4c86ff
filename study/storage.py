"""Where a study's spec lives: `latent_study.yaml` in its Ray results directory (a local
path or a URI such as s3://bucket/dir), so `resume` and `status` can rebuild it."""

from __future__ import annotations

from pathlib import Path

import yaml

from analysis.records import redact
from study.errors import UserError
from study.spec import DEFAULT_STORAGE, StudySpec, check_study_name

SPEC_FILE = "latent_study.yaml"


def _filesystem(path: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(path if "://" in path else Path(path).resolve().as_uri())


def resolve_storage(storage: str) -> str:
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def study_exists(spec: StudySpec) -> bool:
    import pyarrow.fs

    fs, path = _filesystem(spec.path)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_spec(spec: StudySpec) -> None:
    fs, path = _filesystem(spec.path)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SPEC_FILE}") as handle:
        handle.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())


def read_spec(name: str, storage: str = DEFAULT_STORAGE) -> StudySpec:
    check_study_name(name)
    storage = resolve_storage(storage)
    fs, path = _filesystem(f"{storage.rstrip('/')}/{name}")
    try:
        with fs.open_input_stream(f"{path}/{SPEC_FILE}") as handle:
            data = yaml.safe_load(handle.read().decode())
    except (FileNotFoundError, OSError):
        raise UserError(
            f"name: no study {name!r} in {redact(storage)}; check the name (`study status`) or pass --storage"
        ) from None
    return StudySpec(**data)


def list_studies(storage: str = DEFAULT_STORAGE) -> list[StudySpec]:
    root = Path(storage).expanduser()
    if "://" in storage or not root.is_dir():
        return []
    found = []
    for spec_file in sorted(root.glob(f"*/{SPEC_FILE}")):
        try:
            found.append(StudySpec(**yaml.safe_load(spec_file.read_text())))
        except (UserError, TypeError, yaml.YAMLError):
            continue
    return found

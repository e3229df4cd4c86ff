"""Where a study's results live: Ray's results directory, a local path or a URI such as
s3://bucket/dir, holding `latent_study.yaml` (the spec) so `resume`, `status` and
`robustness` can rebuild the study from the storage alone.

A URI may carry pyarrow's options as a query, kept when a path is joined onto it:
s3://bucket/dir?endpoint_override=host:9000&scheme=http names an S3-compatible server
(AWS_ENDPOINT_URL in the environment does the same). Credentials never go in the URI,
which is logged and recorded: pyarrow, Ray and MLflow read them from the environment.

`check_storage` asks the storage one question before anything is written, with short
timeouts, so a wrong endpoint, a missing bucket or refused credentials fail in seconds
with one line, rather than after the study's MLflow run exists (pyarrow's defaults retry
an unreachable endpoint for about 6 s per call, and Ray makes many calls).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml

from analysis.records import redact
from study.errors import UserError
from study.spec import DEFAULT_STORAGE, StudySpec, check_study_name
from trainables.errors import first_line

SPEC_FILE = "latent_study.yaml"
FIELD = "storage"
EXAMPLE = "e.g. s3://bucket/dir?endpoint_override=127.0.0.1:9000&scheme=http"
CREDENTIALS_FIX = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment "
    "of the driver and of every Ray node"
)
# A storage probe gives up after this: long enough for a slow link, short enough that a
# wrong address fails while the user still watches.
CONNECT_SECONDS = 3.0
REQUEST_SECONDS = 5.0


def is_uri(storage: str) -> bool:
    return "://" in storage


def resolve_storage(storage: str) -> str:
    return storage if is_uri(storage) else str(Path(storage).expanduser().resolve())


def join(storage: str, *names: str) -> str:
    """`storage`/`names`, keeping a URI's query (its pyarrow options) at the end."""
    if not is_uri(storage):
        return str(Path(storage, *names))
    parts = urlsplit(storage)
    path = "/".join([parts.path.rstrip("/"), *names])
    return urlunsplit(parts._replace(path=path))


def _filesystem(uri_or_path: str):
    import pyarrow
    import pyarrow.fs

    uri = uri_or_path if is_uri(uri_or_path) else Path(uri_or_path).resolve().as_uri()
    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except (pyarrow.ArrowInvalid, ValueError) as error:
        raise UserError(
            f"{FIELD}: {redact(uri_or_path)!r} is not a storage pyarrow can open "
            f"({_first_line(error)}); {EXAMPLE}"
        ) from None
    except OSError as error:  # e.g. AWS's region lookup for a bucket it cannot see
        raise UserError(
            f"{FIELD}: cannot open {redact(uri_or_path)} ({_first_line(error)}); fix --{FIELD}"
        ) from None


def check_storage(storage: str) -> None:
    """Fail in seconds, with one line naming --storage and the fix, when a URI storage
    cannot be used: credentials in the URI, an unknown scheme or option, an endpoint that
    does not answer, a missing bucket, credentials the server refuses. A local path is
    left to Ray, which creates it."""
    if not is_uri(storage):
        return
    # Not urlsplit's username: an AWS secret key with a '/' in it ends its netloc early.
    if "@" in storage.partition("://")[2].partition("?")[0]:
        raise UserError(
            f"{FIELD}: {redact(storage)} has credentials in it, and the URI is logged and "
            f"recorded; remove them and {CREDENTIALS_FIX}"
        )
    import pyarrow.fs

    filesystem, path = _filesystem(storage)
    if isinstance(filesystem, pyarrow.fs.S3FileSystem):
        _check_s3(storage, path, filesystem.region)
        return
    try:
        filesystem.get_file_info(path)
    except OSError as error:
        raise UserError(
            f"{FIELD}: cannot reach {redact(storage)} ({_first_line(error)}); fix --{FIELD}"
        ) from None


def _check_s3(storage: str, path: str, region: str) -> None:
    """HeadBucket through a client with short timeouts and one retry, otherwise set up as
    Ray's will be (`region`: the one from_uri found for the bucket, or the URI's)."""
    import pyarrow.fs

    query = dict(parse_qsl(urlsplit(storage).query))
    options = {k: query[k] for k in ("scheme", "endpoint_override") if k in query}
    options["region"] = query.get("region", region)
    # FileSystem.from_uri (so Ray) reads the endpoint from the environment when the URI
    # has none; the constructor does not, so it is given here the same way.
    environment_endpoint = _environment_endpoint()
    if "endpoint_override" not in options and environment_endpoint:
        options["endpoint_override"] = environment_endpoint
    filesystem = pyarrow.fs.S3FileSystem(
        **options,
        connect_timeout=CONNECT_SECONDS,
        request_timeout=REQUEST_SECONDS,
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=2),
    )
    bucket = path.split("/", 1)[0]
    endpoint = _s3_endpoint(query)
    try:
        found = filesystem.get_file_info(bucket).type != pyarrow.fs.FileType.NotFound
    except OSError as error:
        reason = _first_line(error, limit=1000)
        if "NETWORK_CONNECTION" in reason or "curlCode" in reason:
            raise UserError(
                f"{FIELD}: cannot connect to the S3 endpoint {endpoint} ({_curl_reason(reason)}); "
                f"fix endpoint_override in --{FIELD} ({EXAMPLE}) or AWS_ENDPOINT_URL"
            ) from None
        if not _has_credentials():
            raise UserError(
                f"{FIELD}: no AWS credentials in the environment, and {endpoint} refused the "
                f"request for bucket {bucket!r} ({_aws_reason(reason)}); {CREDENTIALS_FIX}"
            ) from None
        raise UserError(
            f"{FIELD}: {endpoint} refused the credentials for bucket {bucket!r} "
            f"({_aws_reason(reason)}); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            f"(or AWS_PROFILE) and the bucket's permissions"
        ) from None
    if not found:
        raise UserError(
            f"{FIELD}: bucket {bucket!r} does not exist at {endpoint}; create it "
            f"(aws s3 mb s3://{bucket}) or fix --{FIELD}"
        )


def _environment_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _s3_endpoint(query: dict[str, str]) -> str:
    if "endpoint_override" in query:
        override = query["endpoint_override"]
        return override if is_uri(override) else f"{query.get('scheme', 'https')}://{override}"
    return _environment_endpoint() or "AWS S3"


def _has_credentials() -> bool:
    """Whether the AWS SDK's usual sources hold credentials (environment, profile files,
    a web identity or container role). A role of the machine itself (EC2's metadata
    service) is not seen here; this only shapes the error message."""
    if os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE"):
        return True
    if os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or os.environ.get(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI"
    ):
        return True
    files = (
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"),
        os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"),
    )
    return any(Path(f).expanduser().is_file() for f in files)


def _first_line(error: BaseException, limit: int = 200) -> str:
    return redact(first_line(error))[:limit]


def _curl_reason(reason: str) -> str:
    # "...: curlCode: 7, Could not connect to server; Details: Failed to connect to ..."
    return reason.rpartition("Details: ")[2][:160] or reason[:160]


def _aws_reason(reason: str) -> str:
    # "When getting information for bucket 'b': AWS Error ACCESS_DENIED during HeadBucket ..."
    return reason.partition("': ")[2][:160] or reason[:160]


def study_exists(spec: StudySpec) -> bool:
    import pyarrow.fs

    fs, path = _filesystem(spec.path)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def write_spec(spec: StudySpec) -> None:
    fs, path = _filesystem(spec.path)
    try:
        fs.create_dir(path, recursive=True)
        with fs.open_output_stream(f"{path}/{SPEC_FILE}") as handle:
            handle.write(yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
    except OSError as error:
        raise UserError(
            f"{FIELD}: cannot write the study's spec to {redact(spec.path)} "
            f"({_first_line(error)}); check that the storage is writable, or pass another --{FIELD}"
        ) from None


def remove_study(spec: StudySpec) -> None:
    """Delete the study's directory and everything in it (its spec, Tune's files), local
    or on S3 alike; a directory that was never made is no error. Only for a study this
    command made: `execute` calls it for one that could not start."""
    fs, path = _filesystem(spec.path)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_dir(path)


def read_spec(name: str, storage: str = DEFAULT_STORAGE) -> StudySpec:
    return StudySpec(**read_spec_data(name, storage))


def read_spec_data(name: str, storage: str = DEFAULT_STORAGE) -> dict[str, Any]:
    """The settings study `name` was written with, as stored: validated when written, so
    a reader that needs only some of them skips the family registry (and torch)."""
    check_study_name(name)
    storage = resolve_storage(storage)
    check_storage(storage)
    fs, path = _filesystem(join(storage, name))
    try:
        with fs.open_input_stream(f"{path}/{SPEC_FILE}") as handle:
            data = yaml.safe_load(handle.read().decode())
    except (FileNotFoundError, OSError):
        raise UserError(
            f"name: no study {name!r} in {redact(storage)}; check the name (`study status`) or pass --storage"
        ) from None
    return data


def list_studies(storage: str = DEFAULT_STORAGE) -> list[dict[str, Any]]:
    """The settings of the studies in `storage`, by name, with each one's `path`; an
    unreadable spec (another tool's directory) is skipped."""
    import pyarrow.fs

    storage = resolve_storage(storage)
    if not is_uri(storage) and not Path(storage).is_dir():
        return []
    check_storage(storage)
    fs, root = _filesystem(storage)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
    except OSError as error:
        raise UserError(
            f"{FIELD}: cannot list {redact(storage)} ({_first_line(error)}); fix --{FIELD}"
        ) from None
    found = []
    for entry in sorted(entries, key=lambda e: e.base_name):
        if entry.type != pyarrow.fs.FileType.Directory:
            continue
        try:
            with fs.open_input_stream(f"{entry.path}/{SPEC_FILE}") as handle:
                data = yaml.safe_load(handle.read().decode())
        except (OSError, yaml.YAMLError):
            continue
        # As written (validated then): listing needs no family, so a study of a family
        # from a module elsewhere is listed without importing it.
        if isinstance(data, dict) and {"name", "family", "dataset", "trials"} <= set(data):
            found.append({**data, "path": join(storage, data["name"])})
    return found

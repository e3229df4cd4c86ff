"""What the user sees of an unexpected error (a bug, or a fault of the environment that no
check foresaw): one line on stderr naming it, and its whole traceback in a log file that
the line names.

The log goes to `logs/` in the working directory, beside what the commands write there by
default (mlflow.db, ray_results/, runs/), and so where a user, or a CI job collecting its
working directory, finds it; it is outside every study's directory, so it outlives the
removal of a study that could not start, and `status` and `resume` never see it. Where the
working directory is not writable, the platform's temporary directory takes it.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

from analysis.records import redact
from study.errors import StudyFailed

LOG_DIR = "logs"
MESSAGE_CHARS = 300
# The line of a traceback that names its error: "module.NameError: message" or "NameError".
ERROR_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Failed)(: |$)")


def report(error: Exception, argv: list[str]) -> str:
    """Write `error`'s traceback to a new log file; return the line to show (on stderr)
    for it. Without a writable log directory the traceback goes to stderr before it."""
    path = write_log(error, argv)
    where = f"traceback in {path}" if path else "traceback above"
    if isinstance(error, StudyFailed):
        cause = error.__cause__ or error
        return f"error: {error.what}: {describe(cause)}; {error.outcome}; {where}"
    command = " ".join(["study", *_command(argv)])
    return f"error: `{command}` failed unexpectedly: {describe(error)}; {where}"


def describe(error: BaseException) -> str:
    """'Type: first line of the message', credentials hidden, short enough for one line.
    An error whose message is another's traceback (Ray's TuneError wraps what broke in
    its loop so) is described by that traceback's last line, the error itself."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Traceback (most recent call last)"):
        named = [line for line in lines if ERROR_LINE.match(line)]
        text = (named or [line for line in lines if not line[0].isspace()])[-1]
    elif lines:
        text = f"{type(error).__name__}: {lines[0].strip()}"
    else:
        text = type(error).__name__
    text = redact(text)
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 3] + "..."


def write_log(error: Exception, argv: list[str]) -> Path | None:
    """The log file written for `error` (None when no directory would take it)."""
    words = _command(argv)
    if isinstance(error, StudyFailed):
        words.append(error.name)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = "-".join(["study", *words, stamp, str(os.getpid())]) + ".log"
    text = redact(_log_text(error, argv))
    for directory in (Path(LOG_DIR), Path(tempfile.gettempdir()) / "latent-studies-logs"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory.resolve() / name
            path.write_text(text)
            return path
        except OSError:
            continue
    print(text, file=sys.stderr)
    return None


def _log_text(error: Exception, argv: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("latent-studies")
    except PackageNotFoundError:
        package = "unknown"
    header = [
        f"command: study {' '.join(argv)}",
        f"time:    {time.strftime('%Y-%m-%d %H:%M:%S %z')}",
        f"cwd:     {os.getcwd()}",
        f"version: latent-studies {package}, Python {sys.version.split()[0]}",
        f"outcome: {error}" if isinstance(error, StudyFailed) else "",
    ]
    body = "".join(traceback.format_exception(error))
    return "\n".join(line for line in header if line) + "\n\n" + body


def _command(argv: list[str]) -> list[str]:
    """The subcommand's name ([] when there is none): the group's own options exit."""
    return [word for word in argv if not word.startswith("-")][:1]

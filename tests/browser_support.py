"""Headless Chromium for what users look at, shared by the browser tests and the bench
(section i lists a large study's runs in the MLflow UI the same way).

Chromium runs with `--dump-dom` and a virtual time budget: virtual time stands still while
the page's requests to the server are open, so the React app has its answers and has
rendered them when the budget runs out and the DOM is printed. A fresh profile per page
means no mode is remembered from an earlier visit: the link alone must set it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

# The names `make test` looks for too (Makefile, CHROMIUM_NAMES).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)
VIRTUAL_TIME_MS = 15000


def render(url: str, profile: Path, virtual_time_ms: int = VIRTUAL_TIME_MS) -> str:
    """The DOM of `url` once headless Chromium has rendered it."""
    process = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # as root in a container
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            # Every row and column of the table in view: it renders only those.
            "--window-size=2560,1600",
            f"--virtual-time-budget={virtual_time_ms}",
            "--dump-dom",
            url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        dom, errors = process.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if process.returncode != 0 or not dom:
        raise RuntimeError(f"chromium exited {process.returncode}:\n{errors[-3000:]}")
    return dom


def wait_until_answering(address: str, process: subprocess.Popen, timeout: float) -> None:
    """Until the MLflow server at `address` answers its health check; RuntimeError when
    `process` (the server) exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the MLflow UI exited {process.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{address}/health", timeout=2) as answer,
        ):
            if answer.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the MLflow UI did not answer within {timeout:.0f} s")


def ui_metric_text(value: float) -> str:
    """A number as MLflow's UI (3.17) prints it in the runs table: JavaScript's shortest
    round-trip form (Python's repr, without a whole number's ".0" and with JavaScript's
    exponent: 1e-7 where Python writes 1e-07)."""
    text = repr(float(value))
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa}e{int(exponent):+d}"
    return text.removesuffix(".0")

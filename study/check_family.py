"""`study check-family`: the contract suite that ships with the package
(`trainables.contract`) run on one family, as a family's author runs it, the way
`optuna.testing` checks a sampler. pytest runs the suite in this process, its own output
kept back; what is printed is one line per contract rule that fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from study.errors import UserError

MESSAGE_CHARS = 240


@dataclass
class Rule:
    """One test of the contract, over every case (defaults, variants, dtypes) it ran."""

    name: str  # the test function, e.g. test_training_step_is_cuda_graph_safe
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    message: str = ""  # the first failure's

    @property
    def text(self) -> str:
        return self.name.removeprefix("test_").replace("_", " ")


@dataclass
class Outcome:
    family: str
    origin: str
    rules: dict[str, Rule]
    seconds: float
    pytest_exit: int

    @property
    def failed(self) -> list[Rule]:
        return [rule for rule in self.rules.values() if rule.failed]

    @property
    def ok(self) -> bool:
        return self.pytest_exit == 0 and not self.failed


class _Collector:
    """A pytest plugin that files every test's outcome under its rule."""

    def __init__(self) -> None:
        self.rules: dict[str, Rule] = {}

    def pytest_runtest_logreport(self, report) -> None:
        function, _, case = report.nodeid.rpartition("::")[2].partition("[")
        rule = self.rules.setdefault(function, Rule(function))
        case = case.rstrip("]") or "-"
        if report.failed:
            if case not in rule.failed:
                rule.failed.append(case)
            if not rule.message:
                rule.message = _first_line(report)
        elif report.skipped and report.when in ("setup", "call"):
            rule.skipped.append(case)
        elif report.passed and report.when == "call":
            rule.passed.append(case)

    def pytest_collectreport(self, report) -> None:
        if report.failed:  # the suite could not even be collected (an import error)
            rule = self.rules.setdefault("collection", Rule("test_collection"))
            rule.failed.append("-")
            rule.message = _first_line(report)


def _first_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(report.longrepr)
    line = " ".join(text.strip().splitlines()[:1]) if text.strip() else "failed"
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 3] + "..."


def resolve(target: str) -> tuple[str, str]:
    """The family `target` names, as (name, origin): a registered family's name, or a
    module path (pkg.module) whose FAMILY is loaded."""
    from trainables.errors import ContractError
    from trainables.registry import add_family_module, registered, registered_family

    try:
        if target in registered():
            entry = registered_family(target)
        elif "." in target or _importable(target):
            entry = add_family_module(target)
        else:
            entry = registered_family(target)  # raises, listing the known families
    except ContractError as error:  # the module defines no family: nothing to check
        raise UserError(str(error)) from None
    return entry.family.name, entry.origin


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def check_family(
    target: str, verbose: bool = False, echo: Callable[[str], None] = print
) -> Outcome:
    """Run the contract on the family `target` names, printing the failing rules."""
    try:
        import pytest
    except ImportError:
        raise UserError(
            "check-family: the contract suite runs with pytest; pip install pytest"
        ) from None
    from trainables.registry import CONTRACT_FAMILIES_ENV

    name, origin = resolve(target)
    os.environ[CONTRACT_FAMILIES_ENV] = name
    # pytest imports the suite by its file; a copy imported before (by a test session
    # that runs this) would keep the families it chose then.
    sys.modules.pop("trainables.contract", None)
    suite = importlib.util.find_spec("trainables.contract").origin
    collector = _Collector()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        # An empty ini of our own: the suite must not take the options (addopts, plugins)
        # of whatever project the author runs it from.
        ini = Path(scratch) / "pytest.ini"
        ini.write_text("[pytest]\n")
        args = [
            suite,
            "-c",
            str(ini),
            "--rootdir",
            scratch,
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::DeprecationWarning",
            "-q" if verbose else "-qq",
        ]
        output = io.StringIO()
        with contextlib.redirect_stdout(output) if not verbose else contextlib.nullcontext():
            exit_code = int(pytest.main(args, plugins=[collector]))
    outcome = Outcome(name, origin, collector.rules, time.perf_counter() - started, exit_code)
    _print(outcome, output.getvalue(), echo)
    return outcome


def _print(outcome: Outcome, pytest_output: str, echo: Callable[[str], None]) -> None:
    rules = outcome.rules.values()
    cases = sum(len(r.passed) + len(r.failed) + len(r.skipped) for r in rules)
    echo(f"{outcome.family} ({outcome.origin}): {len(outcome.rules)} rules, {cases} checks")
    for rule in outcome.failed:
        where = ", ".join(rule.failed)
        echo(f"FAIL {rule.text} [{where}]: {rule.message}")
    for rule in rules:
        if rule.skipped and not rule.failed and not rule.passed:
            echo(f"skip {rule.text}")
    if not outcome.rules and outcome.pytest_exit != 0:  # nothing ran: show pytest's word
        echo(pytest_output.strip().splitlines()[-1] if pytest_output.strip() else "no tests ran")
    verdict = (
        "every rule holds"
        if outcome.ok
        else f"{len(outcome.failed)} of {len(outcome.rules)} rules fail"
    )
    echo(f"{outcome.family}: {verdict} ({outcome.seconds:.1f} s)")

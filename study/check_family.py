"""`study check-family`: the contract suite that ships with the package
(`trainables.contract`) run on one family, as a family's author runs it, the way
`optuna.testing` checks a sampler. pytest runs the suite in this process, its own output
kept back; what is printed is one line per contract rule that fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from study.errors import ConfigError

MESSAGE_CHARS = 240
SUITE = "trainables.contract"


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
    """A pytest plugin that keeps the suite's cases of one family and files every test's
    outcome under its rule. Rules over all families (a shared metric name means the same
    everywhere) run too: the family takes part in them."""

    def __init__(self, family: str) -> None:
        self.family = family
        self.rules: dict[str, Rule] = {}

    def pytest_collection_modifyitems(self, config, items) -> None:
        kept, dropped = [], []
        for item in items:
            params = getattr(getattr(item, "callspec", None), "params", {})
            case = params.get("case")
            named = case.name if case is not None else params.get("name", self.family)
            (kept if named == self.family else dropped).append(item)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept

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
    module (pkg.module, or a file's name in the working directory) whose FAMILY is loaded."""
    from trainables.registry import add_family_module, registered, registered_family

    if target in registered():
        entry = registered_family(target)
        return entry.family.name, entry.origin
    try:
        entry = add_family_module(target)
    except ConfigError:
        if "." not in target and not _importable(target):  # a family's name, not a module's
            registered_family(target)  # raises, listing the known families
        raise
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
    import pytest

    name, origin = resolve(target)
    collector = _Collector(name)
    started = time.perf_counter()
    # pytest imports the suite by its file; a copy imported before in this process (a
    # test session that calls this) would keep the families it saw then.
    imported = sys.modules.pop(SUITE, None)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            # An empty ini of our own: the suite must not take the options (addopts,
            # plugins) of whatever project the author runs it from.
            ini = Path(scratch) / "pytest.ini"
            ini.write_text("[pytest]\n")
            args = [
                importlib.util.find_spec(SUITE).origin,
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
            quiet = contextlib.redirect_stdout(output) if not verbose else contextlib.nullcontext()
            with quiet:
                exit_code = int(pytest.main(args, plugins=[collector]))
    finally:
        if imported is not None:
            sys.modules[SUITE] = imported
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

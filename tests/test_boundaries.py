"""Import boundaries between the layers, each checked in a fresh interpreter:

* `trainables` (what a trial computes) loads neither Ray nor MLflow, with every family;
* `analysis` (reading studies back) loads no Ray, no torch and no `study` module, and its
  schema module `analysis.records` not even MLflow, pandas or torch until it is used;
* the `study` command line loads neither Ray nor torch until a command needs them, so
  `study --help`, `status`, `export`, `report` and most refusals of bad input start in a
  fraction of a second, and importing it changes no environment variable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def loaded_after(code: str, watched: tuple[str, ...]) -> list[str]:
    """Which of the `watched` top-level packages are imported after running `code`."""
    script = (
        "import json, sys\n"
        f"{code}\n"
        "top = {name.split('.')[0] for name in sys.modules}\n"
        f"print(json.dumps(sorted(top & {set(watched)!r})))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_trainables_with_every_family_loads_neither_ray_nor_mlflow():
    code = (
        "import trainables\n"
        "families = trainables.all_families()\n"
        "assert len(families) >= 4, families\n"
        "from trainables import Experiment\n"
        "import trainables.contract, trainables.io\n"
    )
    assert loaded_after(code, ("ray", "mlflow", "study", "analysis")) == []


def test_trainables_io_needs_no_torch():
    assert loaded_after("import trainables.io", ("torch", "ray", "mlflow")) == []


def test_analysis_loads_no_ray_torch_or_study():
    code = "import analysis.runs, analysis.report, analysis.export, analysis.robustness, analysis.stats"
    assert loaded_after(code, ("ray", "study", "torch")) == []


def test_the_records_schema_is_light_until_used():
    assert loaded_after("import analysis.records", ("mlflow", "pandas", "torch", "ray")) == []


def test_the_cli_loads_no_ray_until_a_command_needs_it():
    code = "import study.cli, study.spec, study.storage, study.presets, study.train"
    assert loaded_after(code, ("ray",)) == []


def test_the_cli_module_loads_no_torch_and_leaves_the_environment_alone():
    code = (
        "import os\n"
        "before = dict(os.environ)\n"
        "import study.cli, study.spec\n"
        "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())\n"
    )
    assert loaded_after(code, ("torch", "ray", "mlflow")) == []

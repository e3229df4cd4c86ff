"""`study train` through the real command line, as a user runs it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from trainables import Experiment

BIN = Path(sys.executable).parent
# The installed console script when there is one (what a user runs), else the module.
STUDY = [str(BIN / "study")] if (BIN / "study").exists() else [sys.executable, "-m", "study.cli"]
TIMING_KEYS = {"train_seconds", "eval_seconds"}


def study(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)  # carries the session's LATENT_STUDIES_CACHE
    env.pop("LATENT_STUDIES_DATA_DIR", None)
    return subprocess.run(
        [*STUDY, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def without_timing(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_module_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "study.cli", "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--set KEY=VALUE" in done.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("train-cwd")
    out = cwd / "first"
    done = study("train", "mlvae", "--epochs", "2", "--out", str(out), "--json", cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done, out, cwd


def test_train_writes_its_outputs(trained):
    done, out, cwd = trained
    report = json.loads(done.stdout)
    assert Path(report["out"]) == out
    assert report["spec"]["family"] == "mlvae" and report["spec"]["epochs"] == 2
    assert report["spec"]["dataset"] == "digits" and report["spec"]["seed"] == 0
    metrics = report["metrics"]
    for key in ("recon_mse", "content_acc_grouped", "swap_acc", "leakage", "diverged"):
        assert key in metrics and math.isfinite(metrics[key]), key
    assert metrics["diverged"] == 0.0
    assert metrics["train_seconds"] > 0

    assert (out / "state.pt").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["family"] == "mlvae" and config["epochs"] == 2 and config["seed"] == 0
    # The resolved parameters: every field, defaults included.
    assert config["params"]["noise_std"] == 0.1 and "group_size" in config["params"]
    assert config["metrics"] == metrics
    images = sorted(p.name for p in (out / "images").glob("*.png"))
    assert images == ["latent_scatter.png", "reconstructions.png", "swaps.png"]
    assert all((out / "images" / name).stat().st_size > 100 for name in images)
    # Nothing else was left behind (no staging directory, no default runs/).
    assert sorted(p.name for p in cwd.iterdir()) == ["first"]


def test_saved_state_restores(trained, digits):
    done, out, _ = trained
    metrics = json.loads(done.stdout)["metrics"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    experiment = Experiment.create("mlvae", config["params"], digits, seed=0)
    experiment.restore(out)
    assert experiment.epoch == 2 and not experiment.diverged
    assert experiment.last_metrics == without_timing(metrics)
    assert experiment.evaluate()["recon_mse"] == pytest.approx(metrics["recon_mse"], rel=1e-4)


def test_train_from_its_config_reproduces_the_metrics(trained):
    done, out, cwd = trained
    again = cwd.parent / (cwd.name + "-again")
    second = study(
        "train", "--config", str(out / "config.yaml"), "--out", str(again), "--json", cwd=cwd.parent
    )
    assert second.returncode == 0, second.stderr
    first_report, second_report = json.loads(done.stdout), json.loads(second.stdout)
    assert second_report["spec"] == first_report["spec"]
    assert without_timing(second_report["metrics"]) == without_timing(first_report["metrics"])


# --- bad input: exit 2, one line, nothing written -------------------------------------------

BROKEN_YAML = "family: mlvae\nparams: {noise_std: 0.1\nepochs: 2\n"

BAD_INPUTS = {
    # id: (arguments, words the error line must contain)
    "unknown-family": (["train", "vae"], ["family:", "'vae'", "mlvae"]),
    "unknown-parameter": (["train", "mlvae", "--set", "colour=1"], ["colour:", "valid parameters"]),
    "zero-noise-std": (["train", "mlvae", "--set", "noise_std=0"], ["noise_std:", "out of range"]),
    "text-for-int": (["train", "icvae", "--set", "z_dim=abc"], ["z_dim:", "expected int"]),
    "unknown-dataset": (["train", "mlvae", "--dataset", "nope"], ["dataset:", "nope", "npz:PATH"]),
    "zero-epochs": (["train", "mlvae", "--epochs", "0"], ["epochs:", ">= 1"]),
    "malformed-yaml": (
        ["train", "--config", "{inputs}/broken.yaml"],
        ["config:", "not valid YAML"],
    ),
    "mnist-empty-data-dir": (
        ["train", "mlvae", "--dataset", "mnist", "--data-dir", "{inputs}/empty", "--epochs", "1"],
        ["data-dir:", "{inputs}/empty", "--data-dir", "--download"],
    ),
    "out-not-empty": (
        ["train", "mlvae", "--epochs", "1", "--out", "{inputs}/full"],
        ["out:", "not empty"],
    ),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory):
    """Run every row at once (each is a separate process); tests then check their row."""
    inputs = tmp_path_factory.mktemp("bad-inputs")
    (inputs / "broken.yaml").write_text(BROKEN_YAML)
    (inputs / "empty").mkdir()
    (inputs / "full").mkdir()
    (inputs / "full" / "keep.txt").write_text("not yours")

    def run(case_id: str):
        args, _ = BAD_INPUTS[case_id]
        cwd = tmp_path_factory.mktemp(f"cwd-{case_id}")
        args = [a.replace("{inputs}", str(inputs)) for a in args]
        if "--out" not in args:
            args += ["--out", str(cwd / "out")]
        return study(*args, cwd=cwd), cwd

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = dict(zip(BAD_INPUTS, pool.map(run, BAD_INPUTS), strict=True))
    return results, inputs


@pytest.mark.parametrize("case_id", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(bad_input_runs, case_id):
    results, inputs = bad_input_runs
    done, cwd = results[case_id]
    _, words = BAD_INPUTS[case_id]
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line.startswith("error: "), line
    assert "Traceback" not in done.stderr
    for word in words:
        assert word.replace("{inputs}", str(inputs)) in line, (word, line)
    assert done.stdout == ""
    assert list(cwd.iterdir()) == [], "the command wrote into its working directory"
    # The inputs are untouched: the non-empty --out keeps exactly its one file.
    assert sorted(p.name for p in inputs.iterdir()) == ["broken.yaml", "empty", "full"]
    assert list((inputs / "empty").iterdir()) == []
    assert [p.name for p in (inputs / "full").iterdir()] == ["keep.txt"]


def test_a_diverging_run_still_prints_json_alone_with_nulls(tmp_path):
    done = study(
        "train",
        "icvae",
        "--epochs",
        "2",
        "--set",
        "lr=10",
        "--json",
        "--out",
        str(tmp_path / "o"),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(done.stdout)["metrics"]  # stdout is the JSON report and nothing else
    assert metrics["diverged"] == 1.0 and metrics["recon_mse"] is None
    assert "diverged at epoch" in done.stderr

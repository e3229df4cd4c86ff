"""The robustness analysis on a real small study (digits, real Ray and MLflow; the shared
`analysis_study` fixture): `study robustness` with and without neighbours, `study report`
(HTML, Markdown, the executed notebook, and what it logs to MLflow), `study export
--robust` and `study train --config` of the robust-best."""

from __future__ import annotations

import json
import math
import re

import nbformat
import pytest
import yaml
from reliability_support import run_forked_cli
from sweep_helpers import run_study, study_record

from analysis.notebook import NOTEBOOK
from analysis.records import param_column, run_column
from analysis.report import REPORT_ARTIFACTS, load_analysis
from analysis.robustness import seed_summary
from analysis.runs import load_study, ranked
from search_spaces.loader import load_space

# `study train` reproduces a trial's numbers to the last bit (test_sweep); float noise only.
REPRODUCE_ABS = 1e-5
SEARCHED = ("kl_style_weight", "kl_class_weight")


def cli(args: list[str], cwd, ok: bool = True):
    done = run_forked_cli(args, cwd)
    if ok:
        assert done.returncode == 0, f"study {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def variants(study) -> dict[str, list]:
    """Each variant's rows of a re-run study, a row per seed (its trial's replicas)."""
    trials = study.per_seed().trials
    return {v: group for v, group in trials.groupby(run_column("variant"))}


def test_robustness_re_runs_the_best_configs_with_new_seeds(analysis_study):
    study = load_study(analysis_study.name, analysis_study.tracking_uri)
    plain = load_study(analysis_study.plain, analysis_study.tracking_uri)
    groups = variants(plain)
    assert sorted(groups) == ["top1", "top2"]
    assert len(plain.trials) == 2  # a trial per config, its seeds trained as replicas
    best = ranked(study).head(2)
    for rank, (_, searched) in enumerate(best.iterrows(), start=1):
        rows = groups[f"top{rank}"]
        assert sorted(rows[run_column("seed")]) == [1000, 1001]  # not the search's seed 0
        assert all(rows["status"] == "FINISHED")
        for name in SEARCHED:
            assert set(rows[param_column(name)]) == {searched[param_column(name)]}


def test_neighbours_move_one_parameter_one_step_inside_the_space(analysis_study):
    robust = load_study(analysis_study.robust, analysis_study.tracking_uri)
    groups = variants(robust)
    neighbours = [v for v in groups if v.startswith("nbr:")]
    assert {"top1", "top2"} <= set(groups) and len(neighbours) == 2 * len(SEARCHED)
    space = load_space("mlvae").distributions
    top1 = groups["top1"].iloc[0]
    for variant in neighbours:
        row = groups[variant].iloc[0]
        moved = [n for n in SEARCHED if row[param_column(n)] != top1[param_column(n)]]
        assert len(moved) == 1 and variant.startswith(f"nbr:{moved[0]}="), variant
        value, centre = row[param_column(moved[0])], top1[param_column(moved[0])]
        assert space[moved[0]].low <= value <= space[moved[0]].high
        assert value / centre == pytest.approx(2.0) or value / centre == pytest.approx(0.5)
        assert len(groups[variant]) == 2  # two seeds each


def test_robustness_records_its_figures_on_the_source_parent_run(analysis_study):
    """`study robustness` ended by writing the config-vs-seed share and the robust-best to
    the study's parent run (the last robustness run of the fixture was `an-plain`)."""
    parent = study_record(analysis_study.tracking_uri, analysis_study.name).parent
    metrics = parent.data.metrics
    share = metrics["swap_acc_config_share"]
    assert 0 <= metrics["swap_acc_config_share_low"] <= share <= 1
    assert share <= metrics["swap_acc_config_share_high"] <= 1
    found = load_analysis(analysis_study.name, analysis_study.tracking_uri, robust_name="an-plain")
    assert share == pytest.approx(found.luck.config_share)
    assert metrics["robust_best_swap_acc_low"] == pytest.approx(found.robust_best["low"])
    assert metrics["expected_best_swap_acc_of_1"] == pytest.approx(
        ranked(found.study)["swap_acc"].mean()
    )


@pytest.fixture(scope="module")
def report(analysis_study):
    """`study report an --notebook`, once for this module."""
    cli(["report", analysis_study.name, "--notebook"], analysis_study.cwd)
    return analysis_study.cwd / "reports" / analysis_study.name


def test_report_ranks_by_the_lower_bound_inside_the_rate(analysis_study, report):
    page = (report / "index.html").read_text()
    markdown = (report / "report.md").read_text()
    robust = load_study(analysis_study.robust, analysis_study.tracking_uri)
    seeds = seed_summary(robust, "swap_acc", "max")
    best = seeds.iloc[0]
    assert seeds["low"].is_monotonic_decreasing
    for text in (page, markdown):
        for title in ("Seed robustness", "How much is luck", "Budget", "Degeneracy by region"):
            assert title in text
        assert f"Robust-best: {best['variant']}" in re.sub("<[^>]+>", "", text)
        assert "importance is not yet reliable: 6 finished trials" in text
    # Every interval end printed for the re-runs is a rate.
    table = markdown.split("## Seed robustness", 1)[1].split("## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(seeds)
    for row in rows:
        mean, low, high = (float(row[i]) for i in (2, 3, 4))
        assert 0.0 <= low <= mean <= high <= 1.0
    for image in ("seeds.png", "budget.png", "slices.png", "degeneracy.png", "pareto.png"):
        assert (report / image).stat().st_size > 5000, image


def test_report_is_logged_to_the_parent_run(analysis_study, report):
    record = study_record(analysis_study.tracking_uri, analysis_study.name)
    logged = {a.path for a in record.client.list_artifacts(record.parent.info.run_id, "report")}
    assert {f"{REPORT_ARTIFACTS}/index.html", f"{REPORT_ARTIFACTS}/report.md"} <= logged
    assert f"{REPORT_ARTIFACTS}/robustness.ipynb" in logged
    found = load_analysis(analysis_study.name, analysis_study.tracking_uri)
    metrics = record.client.get_run(record.parent.info.run_id).data.metrics
    assert metrics["swap_acc_config_share"] == pytest.approx(found.luck.config_share)
    assert found.luck.configs == 6 and found.luck.runs == 12


def test_the_report_notebook_ran_every_cell(report):
    notebook = nbformat.read(report / "robustness.ipynb", as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    outputs = [o for c in code for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # the figures
    text = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "VarianceShare(config_share=" in text  # the luck cell


def test_the_shipped_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_export_robust_then_train_reproduces_the_robust_best(analysis_study, tmp_path):
    cwd = analysis_study.cwd
    done = cli(["export", analysis_study.name, "--robust", "--out", str(tmp_path / "x")], cwd)
    path = tmp_path / "x" / "robust-best.yaml"
    assert f"retrain: study train --config {path}" in done.stdout
    config = yaml.safe_load(path.read_text())
    robust = load_study(analysis_study.robust, analysis_study.tracking_uri)
    best = seed_summary(robust, "swap_acc", "max").iloc[0]
    assert config["robust"]["variant"] == best["variant"]
    assert config["robust"]["low"] == pytest.approx(best["low"])
    assert config["robust"]["low"] <= config["robust"]["mean"] <= config["robust"]["high"]
    trained = run_study(
        ["train", "--config", str(path), "--json", "--out", str(tmp_path / "re")],
        cwd,
        analysis_study.env,
    )
    metrics = json.loads(trained.stdout.strip().splitlines()[-1])["metrics"]
    assert metrics["swap_acc"] == pytest.approx(config["metrics"]["swap_acc"], abs=REPRODUCE_ABS)
    assert not math.isnan(metrics["recon_mse"])


def test_export_robust_without_re_runs_says_how_to_get_them(analysis_study, tmp_path):
    out = tmp_path / "none"
    done = cli(
        ["export", analysis_study.plain, "--robust", "--out", str(out)],
        analysis_study.cwd,
        ok=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --robust: study {analysis_study.plain!r} has no seed re-runs; run "
        f"`study robustness {analysis_study.plain}` first, or export without --robust"
    ]
    assert not out.exists()

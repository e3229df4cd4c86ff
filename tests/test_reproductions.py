"""Published figures come from the code: the README's reproduction blocks are what the
committed summaries render, and `study reproduce --all` runs every preset through to those
blocks (at a tiny size, in a copy of the README and docs)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from conftest import REPO_ROOT
from test_train_cli import study

from analysis import records, reproductions
from analysis.stats import bootstrap_interval
from study.presets import all_presets, load_preset, parse_preset
from study.reproduce import published_settings
from trainables import get_family
from trainables.errors import ConfigError
from trainables.factor_metrics import FACTOR_METRIC_NAMES

DOCS = REPO_ROOT / "docs" / "reproductions"
README = REPO_ROOT / "README.md"
REPRODUCTIONS = [p for p in all_presets() if p.kind == "reproduction"]
PUBLISHED = published_settings()
TINY = (
    *("--dataset", "digits", "--epochs", "1", "--seeds", "2"),
    *("--set", "hidden=[32]", "--set", "arch=mlp"),
)


def test_readme_blocks_are_what_the_committed_summaries_render():
    text = README.read_text()
    assert reproductions.rewrite_readme(text, DOCS, REPO_ROOT, PUBLISHED) == text, (
        "a README block differs from the committed summaries: run `make reproductions` "
        "(or `make readme-tables` to redraw the blocks alone)"
    )
    blocks = reproductions.readme_blocks(text)
    for preset in REPRODUCTIONS:
        tables = [t.get("name", "table") for t in preset.published.get("tables", [])]
        assert tables, f"{preset.name} publishes no table"
        for name in tables:
            assert (preset.name, name) in blocks, f"the README does not quote {preset.name} {name}"
    for target in re.findall(r"!\[[^\]]*\]\((docs/reproductions/[^)]+)\)", text):
        assert (REPO_ROOT / target).stat().st_size > 1000, target


def test_committed_summaries_say_what_made_them():
    for preset in REPRODUCTIONS:
        summary = json.loads((DOCS / f"{preset.name}.json").read_text())
        assert (
            summary["interval"] == "mean [95% percentile-bootstrap interval of the mean over seeds]"
        )
        assert summary["run_seconds"] > 0 and len(summary["seeds"]) >= 3
        for made in summary["made_with"]:
            assert re.fullmatch(r"[0-9a-f]{40}", made["commit"]) and made["dirty"] is False
            assert made["packages"]["torch"] and made["device"]


def test_reproduce_all_runs_every_preset_through_to_the_readme(tmp_path):
    readme, docs = tmp_path / "README.md", tmp_path / "docs" / "reproductions"
    shutil.copy(README, readme)
    shutil.copytree(DOCS, docs)
    args = (
        "reproduce",
        "--all",
        *TINY,
        "--out",
        "runs",
        "--docs",
        str(docs),
        "--readme",
        str(readme),
    )
    done = study(*args, cwd=tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("about") + done.stdout.count("under a minute") >= 2  # time left
    text = readme.read_text()
    for preset in REPRODUCTIONS:
        summary = json.loads((docs / f"{preset.name}.json").read_text())
        assert [v["name"] for v in summary["variants"]] == [v.name for v in preset.variants]
        assert summary["seeds"] == [0, 1] and summary["epochs"] == 1
        ranges = get_family(preset.family).metric_ranges
        for metric in preset.metrics:
            # A metric may apply to some variants only (mode_acc to a label-conditioned mixture);
            # the factor metrics to none on digits, which has no ground-truth factors.
            counts = [v["metrics"][metric]["n"] for v in summary["variants"]]
            expected = {0} if metric in FACTOR_METRIC_NAMES else {0, 2}
            assert set(counts) <= expected and max(expected) in counts, (
                preset.name,
                metric,
                counts,
            )
        for variant in summary["variants"]:
            for metric in preset.metrics:
                stat = variant["metrics"][metric]
                if stat["n"]:
                    expected = bootstrap_interval(stat["values"], ranges[metric])
                    assert (stat["low"], stat["high"]) == pytest.approx(
                        (expected.low, expected.high)
                    )
        for name in [t.get("name", "table") for t in preset.published.get("tables", [])]:
            block = text.split(f"<!-- published: {preset.name} {name} -->\n", 1)[1]
            assert block.startswith(f"*{preset.family} on digits, 1 epoch (the reference:"), block[
                :80
            ]
        for file, _ in reproductions.published_figures(summary, preset.published):
            assert (docs / file).stat().st_size > 1000, file
    # Tiny runs are not comparable with the published ones: nothing claims they moved.
    assert (
        "No previous publication of the same dataset and length"
        in (docs / "changes.md").read_text()
    )
    assert reproductions.rewrite_readme(text, docs, tmp_path, PUBLISHED) == text
    # Again: every run is kept, and the same summaries render the same README.
    again = study(*args, cwd=tmp_path, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"{len(REPRODUCTIONS)} presets, 0 runs to train")
    assert readme.read_text() == text


def test_a_block_that_cannot_be_drawn_leaves_the_readme_as_it_was(tmp_path):
    readme, docs = tmp_path / "README.md", tmp_path / "docs"
    original = "# x\n<!-- published: aae-priors nosuch -->\nold\n<!-- /published -->\n"
    readme.write_text(original)
    args = ("reproduce", "aae-priors", *TINY, "--out", "runs", "--docs", str(docs))
    done = study(*args, "--readme", str(readme), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: readme: README block aae-priors nosuch:")
    assert "choose figures or one of table" in done.stderr and done.stderr.count("\n") == 1
    assert readme.read_text() == original
    no_docs = study("reproduce", "aae-priors", "--readme", str(readme), cwd=tmp_path)
    assert no_docs.returncode == 2 and "add --docs DIR" in no_docs.stderr


def constructed_summary(**overrides) -> dict:
    def stat(mean, low, high, n=3):
        return {"mean": mean, "low": low, "high": high, "n": n, "values": []}

    def variant(name, params, swap, leak, reference=None):
        return {
            "name": name,
            "dirname": name,
            "params": params,
            "resolved": params,
            "metrics": {"swap_acc": stat(*swap), "leakage_acc": stat(*leak)},
            "reference": reference or {},
            "seconds_per_seed": 1.0,
        }

    summary = {
        "preset": "p",
        "family": "mlvae",
        "dataset": "mnist",
        "epochs": 10,
        "seeds": [0, 1, 2],
        "interval": "mean [95% percentile-bootstrap interval of the mean over seeds]",
        "reference_epochs": 400,
        "run_seconds": 90.0,
        "made_with": [],
        "figures": [],
        "variants": [
            variant("w=1,n=0.1", {"w": 1.0, "n": 0.1}, (0.4, 0.3, 0.5), (0.8, 0.7, 0.9)),
            variant("w=1,n=1.0", {"w": 1.0, "n": 1.0}, (0.41, 0.31, 0.51), (0.81, 0.7, 0.9)),
            variant(
                "w=4,n=0.1",
                {"w": 4.0, "n": 0.1},
                (0.99, 0.98, 1.0),
                (0.5, 0.4, 0.6),
                {"leakage_acc": 0.42},
            ),
            variant("w=4,n=1.0", {"w": 4.0, "n": 1.0}, (0.98, 0.97, 0.99), (0.0, 0.0, 0.0, 0)),
        ],
    }
    return {**summary, **overrides}


def test_a_table_pivots_labels_and_marks_references_as_its_spec_says():
    spec = {
        "rows": ["w"],
        "titles": {"w": "weight"},
        "labels": {"w": {4.0: "four"}},
        "columns": [
            {"metric": "swap_acc", "where": {"n": 0.1}, "title": "n 0.1"},
            {"metric": "swap_acc", "where": {"n": 1.0}, "title": "n 1.0"},
            {"metric": "leakage_acc", "where": {"n": 0.1}},
            {"metric": "leakage_acc", "where": {"n": 1.0}},
        ],
    }
    assert reproductions.table(constructed_summary(), spec).splitlines() == [
        "| weight | n 0.1 | n 1.0 | leakage_acc | leakage_acc |",
        "| --- | --- | --- | --- | --- |",
        "| 1.0 | 0.400 [0.300, 0.500] | 0.410 [0.310, 0.510] | 0.800 [0.700, 0.900] | 0.810 [0.700, 0.900] |",
        "| four | 0.990 [0.980, 1.000] | 0.980 [0.970, 0.990] | 0.500 [0.400, 0.600] (0.420) | – |",
    ]
    caption = reproductions.caption(constructed_summary())
    assert caption.startswith("*mlvae on mnist, 10 epochs (the reference: 400); n = 3 seeds (0-2).")
    assert "the reference's figure in parentheses" in caption
    at_length = reproductions.caption(constructed_summary(epochs=400, variants=[]))
    assert "400 epochs, the reference's length" in at_length and "parentheses" not in at_length


def test_changes_flag_a_figure_outside_its_previous_interval(tmp_path):
    preset = load_preset("mlvae-balance")
    summary = constructed_summary(preset=preset.name, epochs=10)
    summary["variants"][0]["name"] = "kl_style_weight=1.0,noise_std=0.1"
    summary["variants"][1]["name"] = "kl_style_weight=1.0,noise_std=1.0"
    (tmp_path / "previous").mkdir()
    (tmp_path / f"{preset.name}.json").write_text(json.dumps(summary))
    previous = (
        f"# {preset.name}: mlvae on mnist, 10 epochs, seeds 0-2 (n = 3), 10.0 min\n\n"
        "| variant | swap_acc | recon_mse | s/run |\n| --- | --- | --- | --- |\n"
        "| kl_style_weight=1.0,noise_std=0.1 | 0.420 [0.340, 0.500] | 0.016 [0.016, 0.016] | 40 |\n"
        "| kl_style_weight=1.0,noise_std=1.0 | 0.900 [0.850, 0.950] | 0.016 [0.016, 0.016] | 40 |\n"
    )
    (tmp_path / "previous" / f"{preset.name}.md").write_text(previous)
    rows = reproductions.changes(tmp_path, PUBLISHED)
    assert [(r["variant"], r["metric"], r["moved"]) for r in rows] == [
        ("kl_style_weight=1.0,noise_std=0.1", "swap_acc", False),
        ("kl_style_weight=1.0,noise_std=1.0", "swap_acc", True),
    ]
    assert rows[1]["before"] == (0.9, 0.85, 0.95)
    assert reproductions.changes_block(tmp_path, PUBLISHED).startswith(
        "*1 of 2 headline figures moved"
    )
    # Another length is another experiment: nothing to compare.
    (tmp_path / "previous" / f"{preset.name}.md").write_text(
        previous.replace("10 epochs", "40 epochs")
    )
    assert reproductions.changes(tmp_path, PUBLISHED) == []


def test_a_published_table_must_single_out_one_variant_per_cell(tmp_path):
    data = {
        "kind": "reproduction",
        "description": "x",
        "family": "mlvae",
        "dataset": "digits",
        "grid": {"noise_std": [0.1, 1.0], "kl_style_weight": [1.0, 4.0]},
        "metrics": ["swap_acc"],
        "published": {"tables": [{"rows": ["noise_std"], "columns": ["swap_acc"]}]},
    }
    with pytest.raises(
        ConfigError,
        match=r"preset bad: published: tables\[0\]: rows \['noise_std'\] do not single out",
    ):
        parse_preset("bad", data, tmp_path / "bad.yaml")
    data["published"] = {"headline": ["recon_mse"]}
    with pytest.raises(ConfigError, match=r"headline: 'recon_mse' is not a metric in `metrics`"):
        parse_preset("bad", data, tmp_path / "bad.yaml")
    data["published"] = {
        "panels": [{"name": "s", "image": "nosuch", "metric": "swap_acc", "variants": {}}]
    }
    with pytest.raises(ConfigError, match=r"panels\[0\]: image: 'nosuch' is not an image grid"):
        parse_preset("bad", data, tmp_path / "bad.yaml")


def test_an_epoch_pick_reads_each_variants_history(tmp_path):
    def stat(mean):
        return {"mean": mean, "low": mean, "high": mean, "n": 3, "values": []}

    def evaluated(variant, *swaps):
        history = [
            {"epoch": epoch, "metrics": {**variant["metrics"], "swap_acc": stat(swap)}}
            for epoch, swap in zip((10, 40), swaps, strict=True)
        ]
        return {**variant, "history": history}

    summary = constructed_summary()
    summary["variants"] = [
        evaluated(v, 0.1 * i, 0.2 * i) for i, v in enumerate(summary["variants"], start=1)
    ]
    spec = {
        "rows": ["w", "n"],
        "columns": [
            {"metric": "swap_acc", "where": {"epoch": 10}, "title": "10"},
            {"metric": "swap_acc", "where": {"epoch": 40}, "title": "40"},
            {"metric": "swap_acc", "where": {"epoch": 20}, "title": "20"},
            "leakage_acc",
        ],
    }
    lines = reproductions.table(summary, spec).splitlines()
    assert lines[2] == (
        "| 1.0 | 0.1 | 0.100 [0.100, 0.100] | 0.200 [0.200, 0.200] | – | 0.800 [0.700, 0.900] |"
    )
    assert lines[5].startswith("| 4.0 | 1.0 | 0.400 [0.400, 0.400] | 0.800 [0.800, 0.800] | – |")

    data = {
        "kind": "reproduction",
        "description": "x",
        "family": "mlvae",
        "dataset": "digits",
        "epochs": 40,
        "grid": {"noise_std": [0.1, 1.0]},
        "metrics": ["swap_acc"],
        "published": {"tables": [{"rows": ["noise_std"], "columns": [spec["columns"][2]]}]},
    }
    with pytest.raises(ConfigError, match=r"where: 'epoch' is not a parameter"):
        parse_preset("bad", data, tmp_path / "bad.yaml")
    data["eval_epochs"] = [10]
    with pytest.raises(ConfigError, match=r"where: epoch: 20 is not an evaluated epoch"):
        parse_preset("bad", data, tmp_path / "bad.yaml")
    data["published"]["tables"][0]["columns"] = spec["columns"][:2]
    assert parse_preset("ok", data, tmp_path / "ok.yaml").eval_epochs == (10,)


def test_evaluating_along_the_way_leaves_the_training_as_it_was(tmp_path):
    from study.spec import TrainSpec
    from study.train import train_once

    spec = TrainSpec(family="icvae", dataset="digits", epochs=3, seeds=2, params={"hidden": [32]})
    plain, _ = train_once(spec, out_dir=tmp_path / "plain", progress=False)
    along, out = train_once(spec, out_dir=tmp_path / "along", progress=False, evaluate_at=[1, 2])
    timing = {"train_seconds", "eval_seconds"}
    assert {k: v for k, v in along.items() if k not in timing} == {
        k: v for k, v in plain.items() if k not in timing
    }
    history = json.loads((out / "history.json").read_text())
    assert [entry["epoch"] for entry in history] == [1, 2, 3]
    seed1 = records.seed_metric("recon_mse", 1)
    assert history[-1]["metrics"][seed1] == along[seed1]
    assert history[0]["metrics"]["recon_mse"] > along["recon_mse"]
    assert not (tmp_path / "plain" / "history.json").exists()


def test_provenance_names_the_commit_and_whether_tracked_files_differ(tmp_path, monkeypatch):
    import subprocess

    from study import provenance, tracking

    assert provenance.git_commit(tmp_path) == {"commit": None, "dirty": None}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "model.py").write_text("a = 1\n")
    subprocess.run([*git, "add", "model.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert provenance.git_commit(tmp_path) == {"commit": head.strip(), "dirty": False}
    (tmp_path / "notes.txt").write_text("untracked files are not the code that ran\n")
    assert provenance.git_commit(tmp_path)["dirty"] is False
    (tmp_path / "model.py").write_text("a = 2\n")
    assert provenance.git_commit(tmp_path)["dirty"] is True
    # A study's runs are tagged with the same commit.
    found = provenance.git_commit(tmp_path)
    monkeypatch.setattr(provenance, "git_commit", lambda: found)
    assert tracking.code_version().endswith(f"+{head.strip()[:10]}.dirty")

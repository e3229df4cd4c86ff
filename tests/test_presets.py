"""Presets: every shipped preset validates, states its size, and runs end to end at a tiny
size through the real command line; the summary's intervals respect the metrics' ranges."""

from __future__ import annotations

import json

import pytest
import yaml
from sweep_helpers import base_env, run_study, study_record
from test_train_cli import study

from study.presets import all_presets, load_preset, matches, preset_names
from trainables import get_family
from trainables.errors import ConfigError

REPRODUCTIONS = [p.name for p in all_presets() if p.kind == "reproduction"]
SWEEPS = [p.name for p in all_presets() if p.kind == "sweep"]
# Small enough that a preset's every variant at two seeds trains in seconds on digits.
TINY = ("--dataset", "digits", "--epochs", "1", "--seeds", "2", "--set", "hidden=[32]")


def test_a_reproduction_and_a_sweep_preset_ship_for_every_family():
    families = set(get_family(f).name for f in ("mlvae", "icvae", "aae"))
    assert {load_preset(n).family for n in REPRODUCTIONS} >= families
    assert {load_preset(n).family for n in SWEEPS} >= families


@pytest.mark.parametrize("name", preset_names())
def test_preset_validates_and_states_its_size(name):
    preset = load_preset(name)
    assert preset.description
    if preset.kind == "reproduction":
        # The budget: three seeds on a 2-core CPU within 30 minutes, measured; a preset
        # that checks what longer training changes (it evaluates along the way), or one
        # on rendered shapes (a conv net, DCI's trees), within 60.
        assert preset.seeds >= 3 and preset.epochs >= 1
        assert preset.cpu_minutes is not None
        assert preset.cpu_minutes <= (60 if preset.eval_epochs or preset.shapes else 30)
        family = get_family(preset.family)
        for variant in preset.variants:
            family.make_config({**preset.params, **variant.params})
        assert len({v.dirname for v in preset.variants}) == len(preset.variants)
    else:
        assert preset.gpu_hours == 1
        assert preset.sweep["trials"] >= 64 and preset.sweep["gpus_per_trial"] > 0


def test_reference_figures_match_a_variant():
    for name in REPRODUCTIONS:
        preset = load_preset(name)
        for entry in preset.reference.get("figures", []):
            hits = [
                v for v in preset.variants if matches({**preset.params, **v.params}, entry["match"])
            ]
            assert len(hits) == 1, (name, entry["match"])


def test_a_bad_preset_fails_naming_the_preset_and_field(tmp_path):
    from study.presets import parse_preset

    bad = {
        "kind": "reproduction",
        "description": "x",
        "family": "mlvae",
        "dataset": "digits",
        "grid": {"noise_std": [0.1, 0.0]},
    }
    with pytest.raises(ConfigError, match=r"preset bad: params: noise_std: .*use a value in"):
        parse_preset("bad", bad, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match=r"preset bad: metrics: 'prior_mmd' is not a metric"):
        parse_preset("bad", {**bad, "grid": {}, "metrics": ["prior_mmd"]}, tmp_path / "b.yaml")
    pareto = {"kind": "pareto", "x": "recon_mse", "y": "swap_acc", "label": "noise_std"}
    with pytest.raises(ConfigError, match=r"figures: y: 'swap_acc' is not a metric in `metrics`"):
        parse_preset(
            "bad",
            {**bad, "grid": {}, "metrics": ["recon_mse"], "figures": [pareto]},
            tmp_path / "c.yaml",
        )


def test_rerun_with_the_same_out_keeps_finished_runs(tmp_path):
    out = tmp_path / "out"
    args = ("train", "--preset", "aae-priors", *TINY, "--out", str(out))
    first = study(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/seeds0-1/state.pt")}
    assert len(before) == 3
    # A run made before a field existed (`arch`) trained its default: it is kept too.
    older = next(out.glob("*/seeds0-1/config.yaml"))
    config = yaml.safe_load(older.read_text())
    assert config["params"].pop("arch") == "mlp"
    older.write_text(yaml.safe_dump(config))
    # A third seed: the two kept runs per variant stay, only seed 2 trains.
    again = study(*args, "--seeds", "3", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "(3 runs kept)" in again.stdout and again.stdout.count(" seed 2: ") == 3
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/seeds0-1/state.pt")} == before
    assert len(list(out.glob("*/seed2/state.pt"))) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1, 2]
    assert all(v["metrics"]["recon_mse"]["n"] == 3 for v in summary["variants"])
    # Kept runs of another experiment are refused, naming the run and the setting.
    other = study(*args, "--seeds", "3", "--epochs", "2", cwd=tmp_path)
    assert other.returncode == 2
    assert "another epochs (1, not 2)" in other.stderr and other.stderr.count("\n") == 1


@pytest.mark.slow
@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_preset_runs_end_to_end_tiny(name, tmp_path):
    """The preset's settings reach the study (family, eval_every) while the flags given
    override them, so it runs at a tiny size without a GPU."""
    done = run_study(
        [
            "run",
            "--preset",
            name,
            "--dataset",
            "digits",
            "--trials",
            "1",
            "--epochs",
            "1",
            "--gpus-per-trial",
            "0",
            "--cpus-per-trial",
            "1",
            "--concurrency",
            "1",
            "--set",
            "hidden=[32]",
            "--name",
            "tiny",
        ],
        cwd=tmp_path,
        env=base_env(),
    )
    saved = (tmp_path / "ray_results" / "tiny" / "latent_study.yaml").read_text()
    preset = load_preset(name)
    assert f"family: {preset.family}" in saved
    assert f"eval_every: {preset.sweep['eval_every']}" in saved
    assert "trials: 1" in saved and "gpus_per_trial: 0.0" in saved
    record = study_record(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    assert [run.info.status for run in record.children] == ["FINISHED"], done.describe()
    images = {
        a.path for a in record.client.list_artifacts(record.children[0].info.run_id, "images")
    }
    assert "images/latent_scatter.png" in images


def test_a_preset_runs_on_mnist_as_shipped(mnist_dir, tmp_path):
    """The presets' own dataset, one epoch of a small model: what differs from digits (the
    data directory, 28x28 images, the MNIST reference classifier) works end to end."""
    out = tmp_path / "out"
    args = ("--epochs", "1", "--seeds", "2", "--set", "hidden=[64]", "--data-dir", str(mnist_dir))
    done = study("train", "--preset", "mlvae-frozen-heads", *args, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "mnist"
    assert [v["name"] for v in summary["variants"]] == ["noise_std=0.1", "noise_std=1.0"]
    for variant in summary["variants"]:
        assert variant["resolved"]["freeze_class_heads"] is True
        assert variant["metrics"]["content_acc_grouped"]["n"] == 2
        assert variant["reference"]["content_acc_grouped"] in (0.9971, 0.8599)
    assert "(0.997)" in (out / "summary.md").read_text()

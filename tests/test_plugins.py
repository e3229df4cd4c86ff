"""Families from outside the package: the example plugin (examples/conv_vae) installed as
pip leaves a package, run through `study families`, `check-family`, a sweep on Ray with
MLflow, `export` and `train --config`; a broken variant, whose faults check-family names;
`--family-module` for a module that is not installed; and the registry's own rules."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from sweep_helpers import base_env, ray_cluster, ray_tmpdir, run_study, study_record

from analysis import records
from trainables import registry
from trainables.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "conv_vae"
PLUGINS = Path(__file__).with_name("plugins")


def install_on_path(site: Path) -> Path:
    """The example installed the way pip leaves a package: its code in a site directory
    beside a dist-info holding its metadata and the entry points of its pyproject.toml,
    which is what importlib.metadata reads. Put `site` on the path to use it."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    points = project["entry-points"][registry.ENTRY_POINT_GROUP]
    (info / "entry_points.txt").write_text(
        f"[{registry.ENTRY_POINT_GROUP}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
    )
    shutil.copytree(
        EXAMPLE / "conv_vae", site / "conv_vae", ignore=shutil.ignore_patterns("__pycache__")
    )
    return site


def env_with_path(*paths: Path, ray_tmp: Path | None = None) -> dict[str, str]:
    env = base_env(ray_tmp)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, paths), env["PYTHONPATH"]])
    env.pop(registry.FAMILY_MODULES_ENV, None)
    return env


# --- the example, installed, end to end ---------------------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(site directory holding the installed example, a working directory)."""
    site = install_on_path(tmp_path_factory.mktemp("site"))
    return site, tmp_path_factory.mktemp("plugin-cwd")


def test_families_lists_the_plugin_with_its_package_and_space(installed):
    site, cwd = installed
    done = run_study(["families"], cwd=cwd, env=env_with_path(site))
    lines = done.stdout.splitlines()
    (line,) = [x for x in lines if x.startswith("conv_vae ")]
    assert "[latent-studies-conv-vae 0.1.0 (entry point)]" in line
    assert any(x.startswith("betavae  [built in]") for x in lines)
    # Its search space is the one shipped beside its module.
    at = lines.index(line)
    assert lines[at + 1] == f"  space: {site / 'conv_vae' / 'conv_vae.yaml'}"
    assert "z_dim" in "\n".join(lines[at + 2 : at + 8])


def test_check_family_passes_the_example(installed):
    site, cwd = installed
    done = run_study(["check-family", "conv_vae"], cwd=cwd, env=env_with_path(site))
    assert done.returncode == 0, done.describe()
    assert "FAIL" not in done.stdout
    assert done.stdout.splitlines()[-1].startswith("conv_vae: every rule holds")
    # Every rule ran on it, the new ones included.
    first = done.stdout.splitlines()[0]
    assert first.startswith("conv_vae (latent-studies-conv-vae 0.1.0 (entry point)): ")


def write_image_folder(root: Path, classes: int = 3, per_class: int = 24) -> Path:
    """Colour PNGs of two sizes, one subfolder per class (no train/test split): each class
    a hue, each image a bar at a random place."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label in range(classes):
        (root / f"class-{label}").mkdir(parents=True)
        for i in range(per_class):
            height, width = (14, 12) if i % 2 else (10, 9)
            pixels = np.zeros((height, width, 3), np.uint8)
            top = rng.integers(0, height - 3)
            pixels[top : top + 3, :, label] = 255
            Image.fromarray(pixels, "RGB").save(root / f"class-{label}" / f"{i:03}.png")
    return root


@pytest.fixture(scope="module")
def plugin_study(installed):
    """Two trials of the installed plugin on a folder of colour images, resized to 12 px."""
    site, cwd = installed
    images = write_image_folder(cwd.parent / "images")
    with ray_tmpdir() as ray_tmp:
        done = run_study(
            ["run", "conv_vae", "--trials", "2", "--epochs", "2", "--name", "plug"]
            + ["--dataset", f"folder:{images}", "--image-size", "12", "--color", "rgb"],
            cwd=cwd,
            env=env_with_path(site, ray_tmp=ray_tmp),
        )
    return site, cwd, done, images


def test_a_plugin_family_sweeps_on_ray_and_mlflow(plugin_study):
    _, cwd, done, images = plugin_study
    assert done.returncode == 0, done.describe()
    # The folder had no train/ and test/: the split made is said.
    assert f"note: folder:{images} has no train/ and test/" in done.stdout, done.stdout
    record = study_record(f"sqlite:///{cwd / 'mlflow.db'}", "plug")
    assert record.parent.info.status == "FINISHED"
    assert len(record.children) == 2
    for child in record.children:
        params = child.data.params
        assert params[records.run_column("family")] == "conv_vae"
        assert params[records.run_column("dataset")] == f"folder:{images}"
        assert params[records.run_column("image_size")] == "12"
        assert child.info.status == "FINISHED"
        assert 0.0 <= child.data.metrics["recon_mse"] <= 1.0


def test_the_plugin_study_exports_and_trains_again(plugin_study):
    site, cwd, _, images = plugin_study
    env = env_with_path(site)
    done = run_study(["export", "plug"], cwd=cwd, env=env)
    assert done.returncode == 0, done.describe()
    best = yaml.safe_load((cwd / "exports" / "plug" / "best.yaml").read_text())
    assert best["family"] == "conv_vae" and best["dataset"] == f"folder:{images}"
    assert best["image_size"] == 12 and best["color"] == "rgb"
    done = run_study(
        ["train", "--config", "exports/plug/best.yaml", "--out", "again", "--json"],
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.describe()
    assert (cwd / "again" / "metrics.json").exists()
    from PIL import Image

    # Colour images come out as colour grids.
    with Image.open(cwd / "again" / "images" / "reconstructions.png") as grid:
        assert grid.mode == "RGB"


# --- a broken variant: check-family names its faults -------------------------------------
def test_check_family_names_each_broken_rule(installed):
    site, cwd = installed
    done = run_study(
        ["check-family", "broken_conv_vae"],
        cwd=cwd,
        env=env_with_path(site, PLUGINS),
        check=False,
    )
    assert done.returncode == 1, done.describe()
    failed = {
        line.removeprefix("FAIL ").partition(" [")[0]
        for line in done.stdout.splitlines()
        if line.startswith("FAIL ")
    }
    assert failed == BROKEN_RULES, done.stdout
    assert f"{len(BROKEN_RULES)} of " in done.stdout.splitlines()[-1]


# The faults broken_conv_vae.py plants, by the rules they break: (a) a host sync in the
# step, (b) a declared metric evaluate() never returns, (c) training state outside
# state_dict(), which both resume rules catch.
BROKEN_RULES = {
    "training step is cuda graph safe",
    "evaluate changes nothing and returns the declared metrics",
    "save and restore resume exactly",
    "replicas resume exactly",
}


# --- --family-module: a family that is not installed -------------------------------------
MODULE_FAMILY = """
from trainables.families.betavae import BetaVAEFamily


class SmallVAE(BetaVAEFamily):
    name = "small_vae"
    summary = "the beta-VAE under another name, from a module in the working directory"


FAMILY = SmallVAE()
"""


def test_family_module_trains_a_family_from_the_working_directory(tmp_path):
    (tmp_path / "smallfam.py").write_text(MODULE_FAMILY)
    done = run_study(
        ["train", "small_vae", "--family-module", "smallfam", "--epochs", "1", "--out", "run"]
        + ["--json"],
        cwd=tmp_path,
        env=env_with_path(),
    )
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["family"] == "small_vae" and config["family_module"] == "smallfam"
    assert "recon_mse" in done.stdout


@pytest.mark.cluster
def test_a_cluster_without_the_plugin_refuses_it_until_the_tool_ships_it(installed, tmp_path):
    """A two-node cluster started without the plugin, joined by a driver that has it
    installed: the study is refused before anything is written, naming the node and both
    fixes; with --family-module the tool ships the package in Ray's runtime_env and
    every node trains it."""
    site, _ = installed
    with ray_cluster(workers=1) as cluster:
        assert len(cluster.node_ids()) == 2, cluster.log
        env = cluster.env
        env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])  # the driver's
        sweep = ["run", "conv_vae", "--address", cluster.address, "--epochs", "1"]
        refused = run_study([*sweep, "--trials", "1"], cwd=tmp_path, env=env, check=False)
        assert refused.returncode == 2, refused.describe()
        lines = [line for line in refused.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, refused.describe()
        assert re.match(
            r"error: family: a Ray worker on node \S+ \([0-9a-f]{8}\) cannot import ", lines[0]
        )
        assert (
            "import conv_vae.family (ModuleNotFoundError: No module named 'conv_vae')" in lines[0]
        )
        assert (
            "install it on every node (pip install the package of latent-studies-conv-vae"
            in lines[0]
        )
        assert "or pass --family-module conv_vae.family" in lines[0]
        assert sorted(p.name for p in tmp_path.iterdir()) == []

        shipped = run_study(
            [*sweep, "--trials", "2", "--concurrency", "2", "--name", "shipped"]
            + ["--family-module", "conv_vae.family"],
            cwd=tmp_path,
            env=env,
        )
        record = study_record(f"sqlite:///{tmp_path / 'mlflow.db'}", "shipped")
        assert {c.info.status for c in record.children} == {"FINISHED"}, shipped.describe()
        # One CPU per node and two trials at once: both nodes trained the shipped family.
        nodes = {c.data.tags[records.TAG_NODE] for c in record.children}
        assert nodes == cluster.node_ids(), shipped.describe()


# --- the registry ------------------------------------------------------------------------
@pytest.fixture
def clean_registry(monkeypatch):
    """A registry that reads the path and the environment afresh, and forgets after."""
    # Set, not deleted: monkeypatch restores only what it recorded, and the registry
    # writes the variable.
    monkeypatch.setenv(registry.FAMILY_MODULES_ENV, "")
    # Loading a module adds the working directory to the path: keep that to the test.
    monkeypatch.setattr(sys, "path", list(sys.path))

    def forget():
        registry._registered.cache_clear()
        registry._entry_point_families.cache_clear()
        importlib.invalidate_caches()

    forget()
    yield monkeypatch
    for name in [
        m for m in sys.modules if m.split(".")[0] in ("conv_vae", "smallfam", "pointer", "impostor")
    ]:
        del sys.modules[name]
    monkeypatch.undo()
    forget()


def entry_point_site(site: Path, name: str, value: str) -> Path:
    info = site / f"{name}_plugin-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\n{name} = {value}\n")
    return site


def test_an_installed_entry_point_registers_its_family(tmp_path, clean_registry):
    clean_registry.syspath_prepend(str(install_on_path(tmp_path)))
    entry = registry.registered_family("conv_vae")
    assert entry.origin == "latent-studies-conv-vae 0.1.0 (entry point)"
    assert entry.module == "conv_vae.family" and not entry.builtin
    assert entry.space_beside_module == tmp_path / "conv_vae" / "conv_vae.yaml"
    assert {"betavae", "mlvae", "conv_vae"} <= set(registry.all_families())
    assert "conv_vae" not in registry.builtin_families()


def test_a_broken_plugin_is_listed_and_leaves_the_others_working(tmp_path, clean_registry):
    clean_registry.syspath_prepend(
        str(entry_point_site(tmp_path, "ghost", "no_such_pkg.fam:FAMILY"))
    )
    assert "ghost" not in registry.all_families() and "betavae" in registry.all_families()
    (broken,) = registry.broken_plugins()
    assert broken.name == "ghost" and broken.origin == "ghost-plugin 1.0 (entry point)"
    with pytest.raises(
        ConfigError,
        match=r"^family: the plugin 'ghost' of ghost-plugin 1.0 .*No module named 'no_such_pkg'.*; fix or reinstall",
    ):
        registry.get_family("ghost")


def test_an_entry_point_must_be_named_after_its_family(tmp_path, clean_registry):
    site = install_on_path(tmp_path)
    clean_registry.syspath_prepend(str(entry_point_site(site, "pointer", "conv_vae.family:FAMILY")))
    (broken,) = [b for b in registry.broken_plugins() if b.name == "pointer"]
    assert "names family 'conv_vae'; name the entry point after the family" in broken.error


def test_a_family_module_is_found_and_recorded_for_child_processes(tmp_path, clean_registry):
    (tmp_path / "smallfam.py").write_text(MODULE_FAMILY)
    clean_registry.chdir(tmp_path)
    entry = registry.add_family_module("smallfam")
    assert entry.family.name == "small_vae" and entry.origin == "module smallfam"
    assert os.environ[registry.FAMILY_MODULES_ENV] == "smallfam"
    assert registry.module_location("smallfam") == tmp_path / "smallfam.py"
    assert registry.get_family("small_vae") is entry.family


@pytest.mark.parametrize(
    ("module", "error", "message"),
    [
        (
            "no_such_module",
            ConfigError,
            r"^family-module: cannot import 'no_such_module' \(No module named",
        ),
        (
            "json",
            ConfigError,
            r"^family-module: json gives NoneType, not a Family; end the module with FAMILY =",
        ),
    ],
)
def test_a_module_without_a_family_is_refused(clean_registry, module, error, message):
    with pytest.raises(error, match=message):
        registry.add_family_module(module)


def test_a_plugin_may_not_take_a_built_in_name(tmp_path, clean_registry):
    (tmp_path / "smallfam.py").write_text(MODULE_FAMILY.replace('"small_vae"', '"betavae"'))
    clean_registry.chdir(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"^family-module: smallfam defines family 'betavae', which "
        r"trainables\.families\.betavae \(built in\) defines already; rename yours",
    ):
        registry.add_family_module("smallfam")
    # Refused, it is off the record that child processes read.
    assert os.environ[registry.FAMILY_MODULES_ENV] == ""
    assert registry.get_family("betavae").name == "betavae"


def test_an_installed_plugin_that_takes_a_built_in_name_is_listed_broken(tmp_path, clean_registry):
    (tmp_path / "impostor.py").write_text(MODULE_FAMILY.replace('"small_vae"', '"betavae"'))
    clean_registry.syspath_prepend(str(entry_point_site(tmp_path, "betavae", "impostor:FAMILY")))
    (broken,) = registry.broken_plugins()
    assert "defines family 'betavae', which trainables.families.betavae (built in)" in broken.error
    # Every family, the built-in betavae included, still works.
    assert type(registry.get_family("betavae")).__module__ == "trainables.families.betavae"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def broken(:\n", r"importing smallfam raised SyntaxError: .*; fix the module"),
        (
            "raise RuntimeError('no GPU here')\n",
            r"importing smallfam raised RuntimeError: no GPU here; fix",
        ),
        (
            "import not_installed_anywhere\n",
            r"cannot import 'smallfam' \(No module named 'not_installed_anywhere'\); it imports "
            r"not_installed_anywhere, which is not installed here; install it",
        ),
    ],
    ids=["syntax-error", "raises", "missing-dependency"],
)
def test_a_module_that_fails_to_import_is_one_line(tmp_path, clean_registry, source, message):
    (tmp_path / "smallfam.py").write_text(source)
    clean_registry.chdir(tmp_path)
    with pytest.raises(ConfigError, match="^family-module: " + message) as info:
        registry.add_family_module("smallfam")
    assert "\n" not in str(info.value)


def test_check_family_finds_a_one_file_module_in_the_working_directory(tmp_path, clean_registry):
    from study.check_family import resolve

    (tmp_path / "smallfam.py").write_text(MODULE_FAMILY)
    clean_registry.chdir(tmp_path)
    assert resolve("smallfam") == ("small_vae", "module smallfam")
    with pytest.raises(ConfigError, match=r"^family: unknown family 'nosuch'; choose one of"):
        resolve("nosuch")


def test_a_study_of_a_module_family_on_a_folder_resumes_with_its_settings(tmp_path, clean_registry):
    """What `study resume` rebuilds from the storage: the module, the folder, its size
    and colour, all as the study was written."""
    from study.spec import StudySpec
    from study.storage import list_studies, read_spec, write_spec

    (tmp_path / "smallfam.py").write_text(MODULE_FAMILY)
    images = write_image_folder(tmp_path / "images", classes=2, per_class=4)
    clean_registry.chdir(tmp_path)
    spec = StudySpec(
        family="small_vae",
        family_module="smallfam",
        dataset="folder:images",
        image_size=8,
        color="gray",
        storage="results",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert spec.dataset == f"folder:{images}"  # absolute: trials run elsewhere
    assert spec.name.startswith("small_vae-images-")
    write_spec(spec)
    assert read_spec(spec.name, str(tmp_path / "results")) == spec
    # Listing reads the settings as written, without importing the family's module.
    del sys.modules["smallfam"]
    (listed,) = list_studies(str(tmp_path / "results"))
    assert listed["family_module"] == "smallfam" and "smallfam" not in sys.modules

"""Bad input, table-driven, through the `study` command: every row must end with exit
status 2 and one line on stderr naming the field and the fix, no traceback, and nothing
written (no mlflow.db, ray_results/, runs/, exports/ or reports/; an existing MLflow store
unchanged to the byte), and no YAML tag may run a command.

Each row is a process of its own, in a fresh, empty working directory and its own session;
the bad files it reads live elsewhere. A few rows run the installed `study` script end to
end. The others run the same entry point (`study.cli:main`) in a process forked from one
that has imported the CLI already (multiprocessing's forkserver): the CLI's imports cost
seconds per process, and the table would otherwise take minutes. A module fixture runs the
selected rows three at a time; each test then checks its own row.
"""

from __future__ import annotations

import gzip
import shutil
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from reliability_support import clean_env, free_port, run_forked_cli, snapshot
from sweep_helpers import run_study

# A parent run of this name exists in the template store ("kept") for the rows that need
# an existing study; "absent" exists nowhere. KEPT records an Optuna storage that is gone;
# its copy (optuna.db holding study KEPT) comes with the "study" and "optuna" setups.
KEPT = "kept"
KEPT_ROBUST = "kept-robust"  # a robustness study of KEPT in the template store
MARKER = "yaml-tag-ran"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # {inputs}, {closed} and {cwd} are filled in
    field: str  # the field the error line must name
    fix: str  # words of the fix the error line must give
    # "store": a template store copy; "spec": a saved spec; "optuna": an Optuna storage
    # holding study KEPT; "study": all three; "study-without-optuna": the first two.
    setup: str = ""
    script: bool = False  # run the installed `study` script rather than a forked CLI


def case(id: str, command: str, field: str, fix: str, setup: str = "", script=False) -> Case:
    return Case(id, tuple(command.split()), field, fix, setup, script)


CASES = [
    # --- study run: the spec ---
    case("run-unknown-family", "run nofamily", "family:", "choose one of"),
    case("run-unknown-dataset", "run mlvae --dataset cifar", "dataset:", "npz:PATH / folder:PATH"),
    case("run-unknown-objective", "run mlvae --objective nosuch:max", "objective:", "choose from"),
    case("run-unknown-parameter", "run mlvae --set nosuch=1", "nosuch:", "valid parameters"),
    case("run-wrong-type-parameter", "run mlvae --set style_dim=abc", "style_dim:", "expected int"),
    case("run-wrong-type-trials", "run mlvae --trials many", "'--trials'", "valid integer"),
    case("run-zero-trials", "run mlvae --trials 0", "trials:", ">= 1"),
    case("run-unknown-precision", "run mlvae --precision fp8", "'--precision'", "bf16"),
    case("run-zero-dim", "run icvae --set z_dim=0", "z_dim:", "use a value in"),
    case("run-zero-noise-std", "run mlvae --set noise_std=0", "noise_std:", "use a value in"),
    case("run-group-size-1", "run mlvae --set group_size=1", "group_size:", "use a value in"),
    case("run-name-separator", "run mlvae --name a/b", "name:", "no path separators"),
    case("run-name-dotdot", "run mlvae --name ..", "name:", "no path separators"),
    # --- the user's own data (npz:, folder:) ---
    case(
        "npz-missing-file",
        "run betavae --dataset npz:{inputs}/nosuch.npz",
        "dataset:",
        "check the path",
    ),
    case(
        "npz-missing-array",
        "run betavae --dataset npz:{inputs}/no_test_labels.npz",
        "dataset:",
        "no array 'y_test'",
    ),
    case(
        "npz-mismatched-lengths",
        "run betavae --dataset npz:{inputs}/lengths.npz",
        "dataset:",
        "one label per image",
    ),
    case(
        "npz-nan-pixels",
        "train betavae --dataset npz:{inputs}/nan.npz",
        "dataset:",
        "replace them with values in [0, 1]",
    ),
    case(
        "npz-out-of-range",
        "run betavae --dataset npz:{inputs}/range.npz",
        "dataset:",
        "scale pixels to [0, 1]",
    ),
    case(
        "npz-float-labels",
        "train betavae --dataset npz:{inputs}/float_labels.npz",
        "dataset:",
        "integer class indices",
    ),
    case(
        "npz-class-below-group-size",
        "run mlvae --dataset npz:{inputs}/small_class.npz",
        "dataset:",
        "keep group_size <= 3",
    ),
    case(
        "folder-empty",
        "run betavae --dataset folder:{inputs}/empty_folder",
        "dataset:",
        "one subfolder per class",
    ),
    case(
        "folder-unreadable-image",
        "train betavae --dataset folder:{inputs}/unreadable",
        "bad.png",
        "replace or delete the file",
    ),
    case(
        "image-size-without-folder",
        "run betavae --image-size 16",
        "image-size:",
        "folder: datasets only",
    ),
    # --- families from outside the package ---
    case(
        "family-module-missing",
        "run small --family-module no_such_module_here",
        "family-module:",
        "cannot import",
    ),
    case(
        "family-module-not-a-family",
        "train small --family-module json",
        "family-module:",
        "FAMILY = YourFamily()",
    ),
    case("check-family-unknown", "check-family nosuchfamily", "family:", "choose one of"),
    # --- study run: the search space file ---
    case("space-low-above-high", "run mlvae --space {inputs}/low_high.yaml", "lr:", "swap them"),
    case("space-malformed-yaml", "run mlvae --space {inputs}/broken.yaml", "space:", "syntax"),
    case("space-unknown-parameter", "run mlvae --space {inputs}/unknown.yaml", "foo:", "valid"),
    case("space-out-of-range", "run mlvae --space {inputs}/range.yaml", "noise_std:", "use a"),
    case("space-python-tag", "run mlvae --space {inputs}/tag.yaml", "space:", "remove the tag"),
    # --- study run: data, Ray, tracking ---
    case(
        "run-missing-data-dir",
        "run mlvae --dataset mnist --data-dir {inputs}/nosuch",
        "data-dir:",
        "pass --data-dir",
    ),
    case(
        "run-truncated-idx",
        "run mlvae --dataset mnist --data-dir {inputs}/truncated",
        "data-dir:",
        "replace it",
    ),
    case(
        "run-dsprites-missing-file",
        "run betavae --dataset dsprites --data-dir {inputs}/nosuch",
        "data-dir:",
        "study data shapes --out",
    ),
    case(
        "train-dsprites-no-data-dir",
        "train betavae --dataset dsprites",
        "data-dir:",
        "github.com/deepmind/dsprites-dataset",
    ),
    case(
        "run-factor-objective-without-factors",
        "run betavae --objective mig:max",
        "objective: mig needs ground-truth factors",
        "--dataset dsprites",
    ),
    case(
        "run-dci-objective-under-asha",
        "run betavae --dataset dsprites --objective dci_disentanglement:max",
        "objective: dci_disentanglement is computed at a trial's last evaluation only",
        "--scheduler none",
    ),
    case(
        "data-shapes-bad-grid", "data shapes --out out --grid shape=five", "grid:", "FACTOR=COUNT"
    ),
    case(
        "run-unreachable-ray",
        "run mlvae --address 127.0.0.1:{closed}",
        "address:",
        "ray start",
        script=True,
    ),
    case("run-malformed-ray-address", "run mlvae --address nowhere", "address:", "host:port"),
    # --- study run / resume / status: the results storage (no S3 server needed: the
    # refusals come first; test_shared_storage.py has those a real server gives) ---
    case(
        "run-storage-unreachable-endpoint",
        "run mlvae --storage s3://bucket/dir?endpoint_override=127.0.0.1:{closed}&scheme=http --optuna-storage sqlite:///{inputs}/optuna.db",
        "storage:",
        "fix endpoint_override",
    ),
    case(
        "run-storage-unknown-scheme",
        "run mlvae --storage nosuch://bucket/dir --optuna-storage sqlite:///{inputs}/optuna.db",
        "storage:",
        "e.g. s3://",
    ),
    case(
        "run-storage-unknown-option",
        "run mlvae --storage s3://bucket/dir?endpoint=127.0.0.1 --optuna-storage sqlite:///{inputs}/optuna.db",
        "storage:",
        "endpoint_override",
    ),
    case(
        "run-storage-credentials-in-uri",
        "run mlvae --storage s3://AKIAEXAMPLE:se/cret@bucket/dir --optuna-storage sqlite:///{inputs}/optuna.db",
        "storage:",
        "AWS_ACCESS_KEY_ID",
    ),
    case(
        "run-shared-storage-without-optuna-storage",
        "run mlvae --storage s3://bucket/dir?endpoint_override=127.0.0.1:{closed}&scheme=http",
        "optuna-storage:",
        "postgresql://",
    ),
    case(
        "resume-storage-unreachable-endpoint",
        "resume kept --storage s3://bucket/dir?endpoint_override=127.0.0.1:{closed}&scheme=http",
        "storage:",
        "fix endpoint_override",
    ),
    case(
        "status-storage-unreachable-endpoint",
        "status --storage s3://bucket/dir?endpoint_override=127.0.0.1:{closed}&scheme=http",
        "storage:",
        "fix endpoint_override",
    ),
    # --- study run: per-trial resources no node has (Ray would wait for them forever) ---
    case("run-gpus-no-node-has", "run mlvae --gpus-per-trial 2", "gpus-per-trial:", "GPUs"),
    case("run-cpus-no-node-has", "run mlvae --cpus-per-trial 4096", "cpus-per-trial:", "or less"),
    case(
        "run-gpus-script",
        "run mlvae --dataset digits --trials 2 --gpus-per-trial 2",
        "gpus-per-trial:",
        "--gpus-per-trial",
        script=True,
    ),
    case(
        "run-unreachable-tracking",
        "run mlvae --tracking-uri http://127.0.0.1:{closed}",
        "tracking-uri:",
        "start it",
    ),
    case(
        "run-existing-store-bad-param",
        "run mlvae --set hidden=[] --name fresh",
        "hidden:",
        "write e.g.",
        "store",
    ),
    # --- study train ---
    case("train-unknown-family", "train nofamily", "family:", "choose one of"),
    case("train-malformed-config", "train --config {inputs}/broken.yaml", "config:", "syntax"),
    case("train-config-wrong-type", "train --config {inputs}/epochs_text.yaml", "epochs:", ">= 1"),
    case(
        "train-config-python-tag",
        "train --config {inputs}/tag.yaml",
        "config:",
        "remove the",
        script=True,
    ),
    case("train-negative-dim", "train mlvae --set style_dim=-1", "style_dim:", "use a value"),
    case("train-unknown-precision", "train mlvae --precision fp16", "'--precision'", "bf16"),
    case(
        "train-config-unknown-precision",
        "train --config {inputs}/precision.yaml",
        "precision:",
        "fp32",
    ),
    case(
        "train-truncated-idx",
        "train mlvae --dataset mnist --data-dir {inputs}/truncated",
        "data-dir:",
        "replace it",
    ),
    # --- presets ---
    case("train-unknown-preset", "train --preset nosuch", "preset:", "choose one of"),
    case("train-sweep-preset", "train --preset mlvae-mnist-sweep", "preset:", "study run --preset"),
    case("train-zero-seeds", "train mlvae --seeds 0", "seeds:", "replicas"),
    case("run-zero-seeds", "run mlvae --seeds 0", "seeds:", "replicas"),
    case(
        "run-everything-fixed",
        "run betavae --set beta=1 --set z_dim=10 --set lr=0.001",
        "set:",
        "study train betavae",
    ),
    case(
        "run-bad-seed-aggregate",
        "run mlvae --seeds 2 --seed-aggregate best",
        "'--seed-aggregate'",
        "is not one of",
    ),
    case("train-preset-zero-seeds", "train --preset mlvae-reference --seeds 0", "seeds:", ">= 1"),
    case("train-preset-other-family", "train icvae --preset mlvae-reference", "family:", "drop"),
    case(
        "train-preset-bad-parameter",
        "train --preset aae-priors --set z_dim=0",
        "z_dim:",
        "use a value in",
    ),
    case(
        "train-preset-missing-data-dir",
        "train --preset aae-priors --data-dir {inputs}/nosuch",
        "data-dir:",
        "pass --data-dir",
    ),
    case("reproduce-nothing-named", "reproduce", "names:", "--all"),
    case("reproduce-names-and-all", "reproduce aae-priors --all", "names:", "not both"),
    case("reproduce-unknown-preset", "reproduce nosuch", "preset:", "choose one of"),
    case("reproduce-sweep-preset", "reproduce mlvae-mnist-sweep", "names:", "study run --preset"),
    case(
        "reproduce-readme-without-docs", "reproduce --all --readme README.md", "readme:", "--docs"
    ),
    case(
        "reproduce-missing-data-dir",
        "reproduce aae-priors --data-dir {inputs}/nosuch",
        "data-dir:",
        "pass --data-dir",
    ),
    case("run-unknown-preset", "run --preset nosuch", "preset:", "choose one of"),
    case(
        "run-reproduction-preset",
        "run --preset mlvae-reference",
        "preset:",
        "study train --preset",
    ),
    case("run-no-family", "run --trials 2", "family:", "--preset"),
    # --- study export / resume / report ---
    case("export-unknown-study", "export absent", "name:", "study status", script=True),
    case("export-unknown-study-in-store", "export absent", "name:", "study status", "store"),
    case("export-zero-top", "export kept --top 0", "top:", ">= 1", "store"),
    case(
        "export-unreachable-tracking",
        "export kept --tracking-uri http://127.0.0.1:{closed}",
        "tracking-uri:",
        "start it",
    ),
    case("resume-unknown-study", "resume absent", "name:", "study status"),
    case("resume-name-separator", "resume a/b", "name:", "no path separators"),
    case("resume-missing-store", "resume kept", "name:", "restore that store", "spec"),
    case(
        "resume-unreachable-ray",
        f"resume {KEPT} --address 127.0.0.1:{{closed}}",
        "address:",
        "ray start",
        "study",
    ),
    case(
        "resume-missing-optuna-storage",
        "resume kept",
        "optuna-storage:",
        "restore that storage",
        "study-without-optuna",
    ),
    case("report-unknown-study-in-store", "report absent", "name:", "study status", "store"),
    case("report-name-dotdot", "report ..", "name:", "no path separators"),
    # --- study ui NAME: refused before the server starts ---
    case("ui-unknown-study", "ui absent", "name:", "study status"),
    case("ui-unknown-study-in-store", "ui absent", "name:", "study status", "store"),
    case("ui-name-separator", "ui a/b", "name:", "no path separators"),
    # --- the sampler's Optuna storage, and `study dashboard` on it ---
    case(
        "run-optuna-storage-not-url",
        "run mlvae --optuna-storage optuna.db",
        "optuna-storage:",
        "sqlite:///",
    ),
    case(
        "run-optuna-storage-missing-dir",
        "run mlvae --optuna-storage sqlite:///{inputs}/nosuch/optuna.db",
        "optuna-storage:",
        "create it",
    ),
    case(
        "run-optuna-storage-not-a-database",
        "run mlvae --optuna-storage sqlite:///{inputs}/broken.yaml",
        "optuna-storage:",
        "pass another --optuna-storage",
    ),
    case(
        "run-optuna-storage-is-the-mlflow-store",
        "run mlvae --optuna-storage sqlite:///{cwd}/mlflow.db",
        "optuna-storage:",
        "not an Optuna storage",
        "store",
    ),
    case(
        "run-optuna-study-exists",
        f"run mlvae --name {KEPT}",
        "optuna-storage:",
        "optuna delete-study",
        "optuna",
    ),
    case("dashboard-unknown-study", "dashboard absent", "name:", "study status", "store"),
    case("dashboard-missing-storage", "dashboard kept", "optuna-storage:", "restore that", "store"),
    case(
        "dashboard-robustness-study",
        f"dashboard {KEPT_ROBUST}",
        "optuna-storage:",
        f"study dashboard {KEPT}",
        "store",
    ),
]


def _idx_gz(path: Path, array_shape: tuple[int, ...], values: bytes) -> None:
    header = struct.pack(">HBB", 0, 0x08, len(array_shape)) + struct.pack(
        ">" + "I" * len(array_shape), *array_shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + values)


def _write_inputs(inputs: Path) -> None:
    """The bad files the rows read, outside every row's working directory."""
    files = {
        "low_high.yaml": "family: mlvae\nparameters:\n  lr: {type: float, low: 0.1, high: 0.01}\n",
        "broken.yaml": "family: mlvae\nparameters: [\n  lr: {type\n",
        "unknown.yaml": "family: mlvae\nparameters:\n  foo: {type: int, low: 1, high: 4}\n",
        "range.yaml": "family: mlvae\nparameters:\n  noise_std: {type: float, low: 0.0, high: 1.0}\n",
        "tag.yaml": f'!!python/object/apply:os.system ["touch {inputs / MARKER}"]\n',
        "epochs_text.yaml": "family: mlvae\nepochs: ten\n",
        "precision.yaml": "family: mlvae\nprecision: half\n",
    }
    for name, text in files.items():
        (inputs / name).write_text(text)
    # MNIST-style idx files, valid but tiny; then one of them cut short, as by an
    # interrupted copy.
    truncated = inputs / "truncated"
    truncated.mkdir()
    n_train, n_test = 40, 20
    _idx_gz(truncated / "train-images-idx3-ubyte.gz", (n_train, 28, 28), bytes(n_train * 784))
    _idx_gz(truncated / "train-labels-idx1-ubyte.gz", (n_train,), bytes(i % 10 for i in range(40)))
    _idx_gz(truncated / "t10k-images-idx3-ubyte.gz", (n_test, 28, 28), bytes(n_test * 784))
    _idx_gz(truncated / "t10k-labels-idx1-ubyte.gz", (n_test,), bytes(i % 10 for i in range(20)))
    images = truncated / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(images.read_bytes())
    images.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    _write_own_data(inputs)


def _write_own_data(inputs: Path) -> None:
    """npz files and image folders with one fault each (the npz layout: x_train, y_train,
    x_test, y_test)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    labels = np.arange(40) % 4
    good = {
        "x_train": rng.integers(0, 256, (40, 6, 5), dtype=np.uint8),
        "y_train": labels,
        "x_test": rng.integers(0, 256, (20, 6, 5), dtype=np.uint8),
        "y_test": labels[:20],
    }
    nan = good["x_train"].astype(np.float32) / 255
    nan[3, 2, 2] = np.nan
    faults = {
        "no_test_labels": {k: v for k, v in good.items() if k != "y_test"},
        "lengths": {**good, "y_train": labels[:39]},
        "nan": {**good, "x_train": nan},
        "range": {**good, "x_test": good["x_test"].astype(np.float32)},  # 0..255 as floats
        "float_labels": {**good, "y_train": labels.astype(np.float32)},
        # Class 3 has 3 training samples; the ML-VAE's space reaches groups of 32.
        "small_class": {**good, "y_train": np.where(np.arange(40) < 37, labels % 3, 3)},
    }
    for name, arrays in faults.items():
        np.savez(inputs / f"{name}.npz", **arrays)
    (inputs / "empty_folder").mkdir()
    for label in ("a", "b"):
        (inputs / "unreadable" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(good["x_train"][i]).save(inputs / "unreadable" / label / f"{i}.png")
    (inputs / "unreadable" / "b" / "bad.png").write_bytes(b"not a png")


def _template_store(directory: Path) -> Path:
    """An MLflow store holding the parent runs of study KEPT and its robustness study,
    and beside it optuna/optuna.db holding KEPT's Optuna study (made in this process, once)."""
    import optuna
    from mlflow import MlflowClient

    from analysis import records

    db = directory / "mlflow.db"
    client = MlflowClient(f"sqlite:///{db}")
    experiment = client.create_experiment(
        records.DEFAULT_EXPERIMENT, artifact_location=str(directory / "artifacts")
    )
    run = client.create_run(
        experiment,
        run_name=KEPT,
        tags={
            records.TAG_STUDY: KEPT,
            records.TAG_KIND: "study",
            records.TAG_FAMILY: "mlvae",
            records.TAG_DATASET: "digits",
            records.TAG_OBJECTIVES: "swap_acc:max",
            records.TAG_OPTUNA_STORAGE: f"sqlite:///{directory / 'gone' / 'optuna.db'}",
        },
    )
    client.set_terminated(run.info.run_id, "KILLED")
    robust = client.create_run(
        experiment,
        run_name=KEPT_ROBUST,
        tags={
            records.TAG_STUDY: KEPT_ROBUST,
            records.TAG_KIND: "study",
            records.TAG_FAMILY: "mlvae",
            **records.robustness_tags(KEPT),
        },
    )
    client.set_terminated(robust.info.run_id, "FINISHED")
    (directory / "optuna").mkdir()
    storage = f"sqlite:///{directory / 'optuna' / 'optuna.db'}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(storage=storage, study_name=KEPT, directions=["maximize"])
    return db


def _prepare(row: Case, cwd: Path, template: Path) -> None:
    if row.setup in ("store", "study", "study-without-optuna"):
        shutil.copy(template, cwd / "mlflow.db")
    if row.setup in ("optuna", "study"):
        shutil.copy(template.parent / "optuna" / "optuna.db", cwd / "optuna.db")
    if row.setup in ("spec", "study", "study-without-optuna"):
        from study.spec import StudySpec
        from study.storage import SPEC_FILE

        spec = StudySpec(
            family="mlvae",
            name=KEPT,
            trials=2,
            epochs=1,
            storage=str(cwd / "ray_results"),
            tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}",
        )
        (cwd / "ray_results" / KEPT).mkdir(parents=True)
        (cwd / "ray_results" / KEPT / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict()))


@dataclass
class Outcome:
    before: dict[str, str]
    after: dict[str, str]
    result: subprocess.CompletedProcess
    seconds: float


def _run_row(row: Case, root: Path, inputs: Path, template: Path, closed: int) -> Outcome:
    cwd = root / row.id
    cwd.mkdir()
    _prepare(row, cwd, template)
    args = [a.format(inputs=inputs, closed=closed, cwd=cwd) for a in row.args]
    before = snapshot(cwd)
    started = time.monotonic()
    # Either way the row's whole session is killed when it ends: a Ray it might have
    # started must not outlive it.
    if row.script:
        result = run_study(args, cwd=cwd, env=clean_env(), timeout=180, check=False)
    else:
        result = run_forked_cli(args, cwd, timeout=180)
    return Outcome(before, snapshot(cwd), result, time.monotonic() - started)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("bad-inputs")
    _write_inputs(directory)
    return directory


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory, inputs) -> dict[str, Outcome]:
    """Run every selected row, three at a time; rows share nothing they write."""
    selected = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if item.module is request.module and callspec and "row" in callspec.params:
            selected.append(callspec.params["row"])
    template = _template_store(tmp_path_factory.mktemp("template-store"))
    root = tmp_path_factory.mktemp("rows")
    closed = free_port()  # bound and released: nothing listens there
    # The installed-script rows first: they take seconds each, the forked ones a fraction.
    selected.sort(key=lambda row: not row.script)
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            row.id: pool.submit(_run_row, row, root, inputs, template, closed) for row in selected
        }
        return {key: future.result() for key, future in futures.items()}


@pytest.mark.parametrize("row", CASES, ids=[c.id for c in CASES])
def test_bad_input(row: Case, outcomes, inputs) -> None:
    outcome = outcomes[row.id]
    result = outcome.result
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, shown
    assert "Traceback" not in result.stdout + result.stderr, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr\n{shown}"
    line = lines[0]
    assert line.startswith("error: "), shown
    assert row.field in line, f"the error should name {row.field!r}\n{shown}"
    assert row.fix in line, f"the error should say how to fix it ({row.fix!r})\n{shown}"
    assert "se/cret" not in result.stdout + result.stderr, "a secret in a URI was shown"
    # Nothing announced as started: stdout is empty, or the study's header line alone
    # when the failure is only found when connecting to Ray.
    assert len(result.stdout.splitlines()) <= (1 if "address" in row.field else 0), shown
    # Nothing written: the directory, any store in it included, is exactly as before.
    assert outcome.after == outcome.before, shown
    assert not (inputs / MARKER).exists(), "a YAML tag ran a command"
    assert outcome.seconds < 60, f"took {outcome.seconds:.0f}s to refuse bad input"

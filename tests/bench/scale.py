"""Section i ("scale"): what a study of N minimal trials costs beyond its training, and what
reading the finished study costs, beside a bare `tune.Tuner` in the same process layout.

Ours is the real command, `study run betavae --dataset digits --epochs 1 --scheduler none`
with concurrency = cores and one CPU per trial, in a temporary directory with its own
SQLite MLflow store, Optuna storage and Ray storage. The bare Tuner (`python -m
tests.bench.scale bare`) runs a function that only reports the two objectives, searched by
OptunaSearch over the same space with the same sampler, with the same resources, actor
reuse and concurrency limit. Both are child processes; their RSS is sampled from /proc
while they run, against the number of trials finished so far.

Per N:
- wall: the command's, and tuner.fit's (the study logs it on its MLflow parent run);
- slot-seconds per trial outside training: (fit wall x concurrency - the trials' own
  train + eval seconds) / N; the bare Tuner's trials train nothing, so all of its slot time
  is outside training;
- the driver's peak RSS, and its growth per trial: the least-squares slope of RSS against
  trials finished, over the samples after the first tenth of the trials;
- Optuna's suggestion latency at the end: `ask()` on a copy of the finished Optuna study
  with the study's sampler (the first ask reads every trial; the median of the next ones
  is what each later suggestion costs);
- MLflow rows written, per table, and Ray's storage on disk;
- the wall time of `study status`, `study report` and `study export` on the finished study.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tests.bench.common import REPO_ROOT

FAMILY = "betavae"
DATASET = "digits"
EXPERIMENT = "bench"
DEFAULT_TRIALS = (100, 1000)  # 5,000 runs apart: --scale-trials 5000 (about 45 minutes here)
# Targets of issue 24, read from this section's figures (never timed tests).
TARGET_COST_RATIO = 1.2  # cost per trial at N / at 100
TARGET_GROWTH_KB = 50.0  # driver RSS growth per trial
TARGET_STATUS_S = 3.0  # at 5,000 trials
TARGET_REPORT_S = 30.0  # at 5,000 trials
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
MLFLOW_TABLES = ("runs", "params", "tags", "metrics", "latest_metrics", "inputs", "datasets")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.pop("OMP_WAIT_POLICY", None)  # the CLI's own choice for a sweep (study/threads.py)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env


class RssSampler:
    """Samples a process's VmRSS (kB) every `period` seconds, with the trials finished by
    then, until it exits; `peak_kb` also takes the kernel's own high-water mark."""

    def __init__(self, pid: int, period: float = 0.5):
        self.pid, self.period = pid, period
        self.finished = 0  # trials finished, set by the reader of the process's output
        self.samples: list[tuple[int, int]] = []  # (trials finished, RSS kB)
        self.hwm_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _read(self) -> dict[str, int]:
        values = {}
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    values[key] = int(value.split()[0])
        return values

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = self._read()
            except (OSError, ValueError):
                return
            self.samples.append((self.finished, values.get("VmRSS", 0)))
            self.hwm_kb = max(self.hwm_kb, values.get("VmHWM", 0))
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_kb(self) -> int:
        return max([self.hwm_kb, *(rss for _, rss in self.samples)])

    def growth_kb_per_trial(self, trials: int) -> float | None:
        """Least-squares slope of RSS against trials finished, past the first tenth."""
        points = [(n, rss) for n, rss in self.samples if n >= trials / 10]
        xs = [n for n, _ in points]
        if len(set(xs)) < 2:
            return None
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(r for _, r in points)
        sxx = sum((x - mean_x) ** 2 for x in xs)
        return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def run_sampled(command: list[str], cwd: Path, timeout: float) -> dict[str, Any]:
    """Run `command`, following its "[k/N]" progress lines and sampling its RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sampler = RssSampler(process.pid)
    killer = threading.Timer(timeout, process.kill)
    killer.start()
    tail: list[str] = []
    try:
        for line in process.stdout:
            match = PROGRESS.match(line)
            if match:
                sampler.finished = int(match.group(1))
            tail = [*tail[-40:], line.rstrip()]
        process.wait()
    finally:
        killer.cancel()
        sampler.stop()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{command[2:5]} failed ({process.returncode}):\n" + "\n".join(tail))
    return {"wall_s": wall, "sampler": sampler, "tail": tail}


def timed(command: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[2:5])} failed:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - started


def study_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", *args]


def ours(trials: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    name = f"scale-{trials}"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    where = ["--tracking-uri", uri, "--experiment", EXPERIMENT]
    command = study_cli(
        "run", FAMILY, "--dataset", DATASET, "--trials", str(trials), "--epochs", "1",
        "--scheduler", "none", "--concurrency", str(concurrency), "--cpus-per-trial", "1",
        "--name", name, "--storage", str(workdir / "ray_results"),
        "--optuna-storage", f"sqlite:///{workdir / 'optuna.db'}", *where,
    )  # fmt: skip
    run = run_sampled(command, workdir, timeout=600 + 3.0 * trials)
    sampler: RssSampler = run["sampler"]
    busy, fit = _trial_seconds(uri, name)
    result = {
        "trials": trials,
        "wall_s": run["wall_s"],
        "fit_s": fit,
        "wall_per_trial_s": run["wall_s"] / trials,
        "fit_per_trial_s": fit / trials,
        "train_eval_s_per_trial": busy / trials,
        "slot_s_outside_training_per_trial": (fit * concurrency - busy) / trials,
        "driver_peak_rss_mb": sampler.peak_kb / 1024,
        "driver_growth_kb_per_trial": sampler.growth_kb_per_trial(trials),
        "suggest": suggestion_latency(workdir / "optuna.db", name),
        "mlflow_rows": mlflow_rows(workdir / "mlflow.db"),
        "ray_storage_mb": _disk_mb(workdir / "ray_results"),
    }
    result["mlflow_rows_per_trial"] = sum(result["mlflow_rows"].values()) / trials
    reads = {
        "status": ["status", name, "--storage", str(workdir / "ray_results")],
        "report": ["report", name, "--out", str(workdir / "report")],
        "export": ["export", name, "--out", str(workdir / "exports")],
    }
    result["ui"] = ui_lists(workdir, name, uri)
    for command, args in reads.items():
        try:
            result[f"{command}_s"] = timed(study_cli(*args, *where), workdir)
        except RuntimeError as error:  # the sweep's figures stand; the read's failure is one
            result[f"{command}_s"] = None
            result[f"{command}_error"] = str(error)[-2000:]
    return result


def ui_lists(workdir: Path, name: str, uri: str) -> dict[str, Any]:
    """Whether MLflow's UI, opened on `study ui`'s link in headless Chromium, lists the
    study's best runs with their objective: the run names on the rendered page among the
    best 100 (the UI's first page; only the rows in the window are in the DOM), and
    whether the best run's value is shown as the UI formats it."""
    from analysis import records
    from tests.browser_support import CHROMIUM, render, ui_metric_text, wait_until_answering

    if CHROMIUM is None:
        return {"skipped": "no Chromium on PATH"}
    study = records.read_study(name, uri, EXPERIMENT)
    metric, mode = study.parent.ranked_by
    client = records.open_client(uri)
    best = records.best_trial_runs(
        client, study.parent.experiment_id, study.parent.run_id, metric, mode, 100
    )
    with socket.socket() as probe:  # a port free now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = study_cli(
        "ui", name, "--tracking-uri", uri, "--experiment", EXPERIMENT, "--port", str(port)
    )
    log = workdir / "ui.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_until_answering(f"http://127.0.0.1:{port}", server, 120)
        link = re.search(rf"^study {name}: (\S+)$", log.read_text(), re.M).group(1)
        started = time.perf_counter()
        dom = render(link, workdir / "chromium-profile")
        seconds = time.perf_counter() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    listed = sum(f">{run.info.run_name}<" in dom for run in best)
    value = best[0].data.metrics[metric]
    return {
        "render_s": seconds,
        "best_100_listed": listed,
        "best_run_listed": f">{best[0].info.run_name}<" in dom,
        "best_value_shown": f">{ui_metric_text(value)}<" in dom,
    }


def _trial_seconds(uri: str, name: str) -> tuple[float, float]:
    """(the trials' train + eval seconds, summed; tuner.fit's wall seconds)."""
    from analysis.records import read_study

    study = read_study(name, uri, EXPERIMENT)
    busy = sum(
        t.metrics.get("train_seconds", 0.0) + t.metrics.get("eval_seconds", 0.0)
        for t in study.trials
    )
    return busy, float(study.parent.metrics["wall_seconds"])


def suggestion_latency(optuna_db: Path, name: str, asks: int = 11) -> dict[str, float]:
    """Seconds per `ask()` on a copy of the finished Optuna study, with the study's sampler."""
    import optuna

    from study.samplers import sampler_class

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "optuna.db"
        shutil.copy(optuna_db, copy)
        storage = optuna.storages.RDBStorage(f"sqlite:///{copy}")
        first = optuna.load_study(study_name=name, storage=storage)
        sampler = sampler_class(len(first.directions))(seed=0)
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        space = study.get_trials(deepcopy=False)[-1].distributions
        times = []
        for _ in range(asks):
            started = time.perf_counter()
            trial = study.ask(fixed_distributions=space)
            times.append(time.perf_counter() - started)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return {"first_s": times[0], "median_s": statistics.median(times[1:])}


def mlflow_rows(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as connection:
        return {
            table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in MLFLOW_TABLES
        }


def _disk_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def bare(trials: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "tests.bench.scale", "bare", "--trials", str(trials),
        "--concurrency", str(concurrency), "--storage", str(workdir / "bare_results"),
    ]  # fmt: skip
    run = run_sampled(command, workdir, timeout=600 + 5.0 * trials)
    sampler: RssSampler = run["sampler"]
    fit = json.loads(next(line for line in run["tail"] if line.startswith("{")))["fit_s"]
    return {
        "trials": trials,
        "wall_s": run["wall_s"],
        "fit_s": fit,
        "wall_per_trial_s": run["wall_s"] / trials,
        "fit_per_trial_s": fit / trials,
        "slot_s_outside_training_per_trial": fit * concurrency / trials,
        "driver_peak_rss_mb": sampler.peak_kb / 1024,
        "driver_growth_kb_per_trial": sampler.growth_kb_per_trial(trials),
        "ray_storage_mb": _disk_mb(workdir / "bare_results"),
    }


def run(trial_counts, concurrency: int | None = None, log=print, keep: bool = False) -> dict:
    concurrency = concurrency or os.cpu_count() or 1
    results: dict[str, Any] = {"concurrency": concurrency, "ours": {}, "bare": {}}
    for n in trial_counts:
        workdir = Path(tempfile.mkdtemp(prefix=f"latent-bench-scale-{n}-"))
        try:
            log(f"  N = {n}: the bare Tuner ...")
            results["bare"][n] = bare(n, concurrency, workdir)
            log(f"  N = {n}: study run {FAMILY} ...")
            results["ours"][n] = ours(n, concurrency, workdir)
        finally:
            if keep:
                log(f"  N = {n}: kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        log(f"  N = {n}: " + json.dumps(results["ours"][n], default=str)[:400])
    return results


# --- the bare Tuner, as a child process ------------------------------------------------
def _objectives(config: dict[str, Any]) -> dict[str, float]:
    """Deterministic values in the objectives' ranges, so NSGA-II has fronts to sort."""
    import math

    beta, z_dim, lr = config["beta"], config["z_dim"], config["lr"]
    return {
        "recon_mse": 0.05 + 0.02 * math.log(beta + 1.0) + 0.1 / z_dim,
        "content_acc": min(1.0, 0.3 + 0.1 * math.log10(lr * 1e4) + 0.02 * z_dim),
    }


def report_only(config: dict[str, Any]) -> None:
    from ray import tune

    tune.report(_objectives(config))


def bare_main(trials: int, concurrency: int, storage: str) -> None:
    import ray
    from ray import tune
    from ray.tune import Callback, RunConfig, TuneConfig
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from search_spaces.loader import load_space
    from study.samplers import sampler_class

    class Progress(Callback):
        done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            print(f"[{self.done}/{len(trials)}]", flush=True)

    space = load_space(FAMILY).search_space()
    searcher = OptunaSearch(
        space,
        metric=["recon_mse", "content_acc"],
        mode=["min", "max"],
        sampler=sampler_class(2)(seed=0),
    )
    ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False)
    tuner = tune.Tuner(
        tune.with_resources(report_only, {"cpu": 1}),
        tune_config=TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency),
            num_samples=trials,
            reuse_actors=True,
        ),
        run_config=RunConfig(name="bare", storage_path=storage, callbacks=[Progress()], verbose=0),
    )
    started = time.perf_counter()
    tuner.fit()
    print(json.dumps({"fit_s": time.perf_counter() - started}), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.scale")
    parser.add_argument("what", choices=["bare"])
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--storage", required=True)
    args = parser.parse_args(argv)
    bare_main(args.trials, args.concurrency, args.storage)


if __name__ == "__main__":
    main()

"""The `study` command line. Each command validates its input into a spec first, so a typo
costs one line and exit status 2, and nothing is written."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import click

from study import threads
from study.errors import UserError
from study.spec import StudySpec, TrainSpec, parse_overrides
from trainables.config import DOWNLOADABLE

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class StudyGroup(click.Group):
    """Turns every user error, click's included, into one line on stderr and exit 2, and
    any other error into one line naming it and the log file holding its traceback, and
    exit 1 (see failure_log)."""

    def main(self, args=None, prog_name=None, **kwargs):
        try:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(130)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else "study"
            click.echo(f"error: {error.format_message()} (see `{command} --help`)", err=True)
            sys.exit(2)
        except UserError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except Exception as error:  # noqa: BLE001 - a bug or a fault no check foresaw
            from study.failure_log import report

            click.echo(report(error, sys.argv[1:] if args is None else list(args)), err=True)
            sys.exit(1)


@click.group(cls=StudyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latent-studies")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Hyperparameter and robustness studies of disentangled and invariant autoencoders."""
    # Before any command loads torch (this module does not): libgomp reads it once.
    # Ray's local workers inherit it.
    threads.configure(ctx.invoked_subcommand)


def spec_option(spec_cls: type, name: str):
    """The option for field `name` of a spec dataclass (StudySpec, TrainSpec): its flag,
    type, choices and help come from the field. The option's own default is None, so a
    value the user gave can be told from one they did not (a preset or a --config file
    fills those); the help shows the spec's default."""
    from study.spec import setting_type, settings_of

    spec_field = settings_of(spec_cls)[name]
    meta = spec_field.metadata
    default = None if spec_field.default is dataclasses.MISSING else spec_field.default
    shown = f" [default: {default}]" if default not in (None, "") else ""
    multiple = spec_field.default_factory is not dataclasses.MISSING
    # Lists and dicts (--objective, --set) are given as repeated strings.
    kind = str if multiple else setting_type(spec_cls, name)
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    return click.option(
        flag,
        name,
        type=click.Choice(meta["choices"]) if "choices" in meta else kind,
        multiple=multiple,
        default=None,
        metavar=meta.get("metavar"),
        envvar=meta.get("envvar"),
        help=meta["help"] + shown,
    )


def spec_options(spec_cls: type, *names: str):
    """Decorate a command with the options of `spec_cls`'s fields `names` (every field
    that has a flag when none are named)."""
    from study.spec import settings_of

    chosen = names or [
        n for n, f in settings_of(spec_cls).items() if f.metadata.get("flag", "") is not None
    ]

    def decorate(command):
        for name in reversed(chosen):
            command = spec_option(spec_cls, name)(command)
        return command

    return decorate


VERBOSE = click.option("-v", "--verbose", is_flag=True, help="Show Ray's own logs and progress.")
DOWNLOAD = click.option("--download", is_flag=True, help="Fetch MNIST-style data with torchvision.")


@cli.command()
@click.argument("family", required=False)
@click.option(
    "--config",
    "config_file",
    help="YAML file (e.g. an export) with family, dataset, epochs, seed, params.",
)
@spec_options(TrainSpec, "dataset", "epochs", "seed", "seeds", "params", "precision")
@spec_options(TrainSpec, "image_size", "color", "family_module")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@spec_options(StudySpec, "data_dir")
@DOWNLOAD
@click.option(
    "--out", help="Output directory (default runs/train/<family>-<dataset>-seed<S>-<time>)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option(
    "--preset",
    help="Run a reproduction preset: its variants at several seeds (see `study presets`).",
)
def train(
    family,
    config_file,
    dataset,
    epochs,
    seed,
    seeds,
    params,
    device,
    precision,
    image_size,
    color,
    family_module,
    data_dir,
    download,
    out,
    as_json,
    preset,
):
    """Train one model of FAMILY and report its metrics, or a reproduction preset's runs."""
    from study.train import train_once

    if preset:
        train_preset(click.get_current_context().params)
        return

    spec = TrainSpec.from_sources(
        family,
        config_file,
        parse_overrides(params),
        dataset=dataset,
        epochs=epochs,
        seed=seed,
        seeds=seeds,
        precision=precision,
        image_size=image_size,
        color=color,
        family_module=family_module,
    )
    metrics, out_dir = train_once(spec, device, data_dir, download, out, progress=not as_json)
    if as_json:
        from study.reproduce import json_safe

        # NaN (a diverged run) is not JSON: write null.
        report = {"out": str(out_dir), "spec": spec.to_dict(), "metrics": metrics}
        click.echo(json.dumps(json_safe(report)))
        return
    click.echo(format_metrics(metrics))
    click.echo(f"saved weights, config.yaml, metrics.json and images/ to {out_dir}")


def train_preset(options: dict) -> None:
    """`study train --preset NAME`: the preset's variants at its seeds (see reproduce.py)."""
    from study.presets import load_preset
    from study.reproduce import json_safe, markdown, reproduce

    name, family, seeds = options["preset"], options["family"], options["seeds"]
    preset = load_preset(name)
    if preset.kind != "reproduction":
        raise UserError(
            f"preset: {name} is a {preset.kind} preset; run it with `study run --preset {name}`"
        )
    if options["config_file"]:
        raise UserError("config: --config and --preset both define the run; drop one")
    if family and family != preset.family:
        raise UserError(
            f"family: preset {name} is for {preset.family!r}, not {family!r}; drop FAMILY"
        )
    if seeds is not None and seeds < 1:
        raise UserError(f"seeds: expected a whole number >= 1, got {seeds}")
    as_json = options["as_json"]
    runs = preset.train_specs(
        seeds,
        options["seed"] or 0,
        dataset=options["dataset"],
        epochs=options["epochs"],
        precision=options["precision"],
        image_size=options["image_size"],
        color=options["color"],
        family_module=options["family_module"],
        params=parse_overrides(options["params"]),
    )
    summary, out_dir = reproduce(
        preset,
        runs,
        options["out"],
        options["device"],
        options["data_dir"],
        options["download"],
        echo=lambda line: click.echo(line, err=as_json),
    )
    if as_json:
        click.echo(json.dumps({"out": str(out_dir), "summary": json_safe(summary)}))
        return
    click.echo(markdown(summary))
    click.echo(f"saved every run, summary.json, summary.md and figures to {out_dir}")


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every reproduction preset.")
@click.option(
    "--out",
    default="runs/reproductions",
    show_default=True,
    help="Where the runs go, one directory per preset; a rerun keeps the finished ones.",
)
@click.option(
    "--docs",
    help="Also publish: each summary, its figures and image panels into this directory.",
)
@click.option(
    "--readme",
    help="With --docs: rewrite this file's `<!-- published: ... -->` blocks from the summaries.",
)
@click.option(
    "--readme-only",
    is_flag=True,
    help="Train nothing: only rewrite --readme's blocks from the summaries in --docs.",
)
@spec_options(TrainSpec, "dataset", "epochs", "seeds", "params")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@spec_options(StudySpec, "data_dir")
@DOWNLOAD
def reproduce(
    names,
    everything,
    out,
    docs,
    readme,
    readme_only,
    dataset,
    epochs,
    seeds,
    params,
    device,
    data_dir,
    download,
):
    """Run reproduction presets NAMES (or --all), resuming, and summarise each (see `study
    presets`); with --docs and --readme, publish what the README quotes. --dataset,
    --epochs, --seeds and --set override every preset's own."""

    from study.presets import load_preset, preset_names
    from study.reproduce import TimeLeft, plan_preset, run_plans

    if readme_only:
        if not (docs and readme):
            raise UserError(
                "readme-only: name the summaries and the file: --docs DIR --readme FILE"
            )
        from study.reproduce import rewrite_readme_file

        click.echo(rewrite_readme_file(Path(readme), Path(docs)))
        return
    if everything and names:
        raise UserError("names: give preset names or --all, not both")
    if not everything and not names:
        raise UserError("names: name reproduction presets (see `study presets`) or pass --all")
    if seeds is not None and seeds < 1:
        raise UserError(f"seeds: expected a whole number >= 1, got {seeds}")
    if readme and not docs:
        raise UserError("readme: its blocks are drawn from the published summaries; add --docs DIR")
    if readme and not Path(readme).is_file():
        raise UserError(f"readme: {readme} is not a file; name the README to rewrite")
    if readme:
        from study.reproduce import check_readme

        check_readme(Path(readme))
    overrides = parse_overrides(params)
    chosen = [load_preset(n) for n in (names or preset_names())]
    if names:
        for preset in chosen:
            if preset.kind != "reproduction":
                raise UserError(
                    f"names: {preset.name} is a {preset.kind} preset; "
                    f"run it with `study run --preset {preset.name}`"
                )
    plans = [
        plan_preset(
            p,
            p.train_specs(seeds, dataset=dataset, epochs=epochs, params=overrides),
            Path(out) / p.name,
        )
        for p in chosen
        if p.kind == "reproduction"
    ]
    clock = TimeLeft(sum(job.estimate for plan in plans for job in plan.jobs))
    summaries = run_plans(plans, clock, device, data_dir, download, click.echo)
    if docs:
        from study.reproduce import publish_all

        for line in publish_all(plans, summaries, Path(docs), Path(readme) if readme else None):
            click.echo(line)


@cli.command()
@click.argument("name", required=False)
def presets(name):
    """List the presets shipped with the package, or print preset NAME's YAML."""
    from study.presets import all_presets, load_preset

    if name:
        click.echo(load_preset(name).path.read_text(), nl=False)
        return
    shipped = all_presets()
    width = max(len(p.name) for p in shipped) + 1
    for preset in shipped:
        size = (
            f"{len(preset.variants)} variants x {preset.seeds} seeds x {preset.epochs} epochs"
            + (f", ~{preset.cpu_minutes:g} min on 2 CPU cores" if preset.cpu_minutes else "")
            if preset.kind == "reproduction"
            else f"{preset.sweep.get('trials')} trials"
            + (f", ~{preset.gpu_hours:g} GPU-hour" if preset.gpu_hours else "")
        )
        click.echo(
            f"{preset.name:<{width}} {preset.kind:<12} {preset.family:<6} {preset.dataset:<14} {size}"
        )
        click.echo(f"{'':<{width}} {preset.description.splitlines()[0]}")


@cli.command()
@click.argument("family", required=False)
@click.option(
    "--preset", help="Take the settings of a sweep preset (see `study presets`); flags override."
)
@DOWNLOAD
@VERBOSE
@spec_options(StudySpec)
def run(family, preset, download, verbose, **given):
    """Sweep FAMILY's hyperparameters with Optuna on Ray Tune, recording every trial in MLflow."""
    from study.execute import execute
    from study.plan import plan_search

    spec = study_spec(family, preset, given)
    if download and spec.dataset in DOWNLOADABLE:  # after the spec is valid: a typo must not
        from trainables import load_dataset  # cost a download; your own files have none

        load_dataset(spec.dataset, spec.data_dir, download=True)
    print_where(execute(plan_search(spec, verbose), verbose))


def study_spec(family: str | None, preset: str | None, given: dict):
    """The StudySpec of `study run`: the spec's defaults, then a sweep preset's settings,
    then the flags given; `--set` values are held fixed over the preset's `params`."""
    from study.spec import StudySpec

    values = {k: v for k, v in given.items() if v not in (None, ())}
    fixed = parse_overrides(values.pop("fixed", ()))
    if preset:
        family, settings, preset_fixed = sweep_preset(preset, family)
        values = {**settings, **values}
        fixed = {**preset_fixed, **fixed}
    if not family:
        raise UserError("family: name one (e.g. `study run mlvae`) or use --preset NAME")
    if "objectives" in values:
        values["objectives"] = list(values["objectives"])
    return StudySpec(family=family, fixed=fixed, **values)


def sweep_preset(name: str, family: str | None) -> tuple[str, dict, dict]:
    """A sweep preset's family, StudySpec settings and fixed parameters."""
    from study.presets import load_preset, presets_dir

    preset = load_preset(name)
    if preset.kind != "sweep":
        raise UserError(
            f"preset: {name} is a {preset.kind} preset; run it with `study train --preset {name}`"
        )
    if family not in (None, preset.family):
        raise UserError(
            f"family: preset {name} is for {preset.family!r}, not {family!r}; drop FAMILY"
        )
    settings = {"dataset": preset.dataset, **preset.sweep}
    if "space_file" in settings:
        settings["space_file"] = str(presets_dir() / settings["space_file"])
    return preset.family, settings, dict(preset.params)


def print_where(outcome) -> None:
    from analysis.records import redact

    spec = outcome.spec
    click.echo(f"results: {spec.path}")
    click.echo(
        f"mlflow:  {redact(spec.tracking_uri)} (experiment {spec.experiment!r}, parent run {outcome.parent_run_id})"
    )
    click.echo(
        f"next:    study ui {spec.name}   |   study status {spec.name}   |   study export {spec.name}"
    )


@cli.command()
@click.argument("name")
@spec_options(StudySpec, "storage", "address")
@VERBOSE
def resume(name, storage, address, verbose):
    """Continue the interrupted study NAME to its requested trial count (on --address when
    given, else on the study's own cluster)."""
    from study.execute import resume as resume_study
    from study.spec import DEFAULT_STORAGE

    print_where(resume_study(name, storage or DEFAULT_STORAGE, address, verbose))


@cli.command()
@click.argument("name", required=False)
@spec_options(StudySpec, "storage", "tracking_uri", "experiment")
def status(name, storage, tracking_uri, experiment):
    """List studies, or show NAME's trials by status and its best results so far."""
    from analysis.records import DEFAULT_EXPERIMENT
    from study.spec import DEFAULT_STORAGE
    from study.storage import list_studies, read_spec_data

    storage, experiment = storage or DEFAULT_STORAGE, experiment or DEFAULT_EXPERIMENT
    if not name:
        studies = list_studies(storage)
        if not studies:
            click.echo(f"no studies in {storage}")
        for spec in studies:
            click.echo(
                f"{spec['name']:<40} {spec['family']:<6} {spec['dataset']:<14} "
                f"{spec['trials']:>4} trials  {spec['path']}"
            )
        return
    from analysis import records
    from study.storage import join, resolve_storage

    spec = read_spec_data(name, storage)
    uri = records.resolve_tracking_uri(tracking_uri or spec["tracking_uri"])
    client, experiment_id, run = find_study_or_fail(uri, name, experiment)
    parent = records.StudyRecord.from_run(run)
    counts = parent.progress or _counted_trials(name, uri, experiment)
    click.echo(
        f"study {name}: {spec['family']} on {spec['dataset']}, "
        f"{counts['trials_total']}/{spec['trials']} trials"
    )
    # Ray's TERMINATED is a trial that ended without error, ASHA-stopped ones included.
    shown = {"finished": "terminated", "error": "error", "diverged": "diverged"}
    shown |= {"running": "running", "pending": "pending"}
    parts = [f"{w} {counts['trials_' + k]}" for w, k in shown.items() if counts["trials_" + k]]
    at = parent.tags.get(records.TAG_PROGRESS_AT)
    click.echo("  " + (", ".join(parts) or "no trials yet") + (f"  (as of {at})" if at else ""))
    for metric, mode in dict.fromkeys([parent.ranked_by, *parent.objectives]):
        if parent.progress:
            best = parent.best(metric)
        else:  # an earlier version's study
            best = _best_trial(client, experiment_id, parent.run_id, metric, mode)
        if best is not None:
            value, trial_id = best
            click.echo(f"  best {metric} ({mode}): {value:.4f}  trial {trial_id}")
    click.echo(f"  results: {join(resolve_storage(storage), name)}")


def _best_trial(client, experiment_id: str, parent_run_id: str, metric: str, mode: str):
    """(value, trial id) of the study's best finished, non-diverged trial by `metric`, from
    the store's ordering; None when none of the first few has a finite value."""
    from analysis import records
    from analysis.stats import finite_or_none

    for run in records.best_trial_runs(client, experiment_id, parent_run_id, metric, mode, 10):
        value = finite_or_none(run.data.metrics.get(metric))
        if value is not None and not run.data.metrics.get("diverged"):
            return value, run.data.tags.get(records.TAG_TRIAL)
    return None


def _counted_trials(name: str, uri: str, experiment: str) -> dict[str, int]:
    """PROGRESS_METRICS counted from every trial run, for a study whose driver did not
    keep them on its parent run (one recorded by an earlier version)."""
    from analysis.runs import load_study

    trials = load_study(name, uri, experiment).trials
    status = trials["status"] if not trials.empty else []
    diverged = trials["diverged"].fillna(0) if "diverged" in trials else [0] * len(trials)
    return {
        "trials_total": len(trials),
        "trials_pending": 0,
        "trials_running": int(sum(s == "RUNNING" for s in status)),
        "trials_terminated": int(sum(s == "FINISHED" for s in status)),
        "trials_error": int(sum(s in ("FAILED", "KILLED") for s in status)),
        "trials_diverged": int(sum(bool(d) for d in diverged)),
    }


@cli.command()
@click.argument("name")
@click.option(
    "--top", type=int, default=1, show_default=True, help="Also export the K best trials."
)
@click.option("--out", default=None, help="Directory (default exports/<name>).")
@click.option(
    "--robust",
    is_flag=True,
    help="Require NAME's seed re-runs (`study robustness NAME`) and retrain their robust-best.",
)
@spec_options(StudySpec, "tracking_uri", "experiment")
def export(name, top, out, robust, tracking_uri, experiment):
    """Write the best trials of study NAME as configs `study train --config` accepts, and
    the robust-best of its seed re-runs (robust-best.yaml) when it has any."""
    from analysis.export import export_study
    from analysis.records import DEFAULT_EXPERIMENT
    from analysis.runs import load_study
    from study.spec import check_study_name

    check_study_name(name)
    experiment = experiment or DEFAULT_EXPERIMENT
    if top < 1:
        raise UserError(f"top: expected a whole number >= 1, got {top}")
    study = load_study(name, tracking_uri, experiment)
    try:
        reruns = load_study(f"{name}-robust", tracking_uri, experiment)
    except UserError:
        if robust:
            raise UserError(
                f"--robust: study {name!r} has no seed re-runs; run `study robustness {name}` "
                "first, or export without --robust"
            ) from None
        reruns = None  # no robustness run: no robust-best.yaml
    paths = export_study(study, out or f"exports/{name}", top, reruns, require_robust=robust)
    for path in paths:
        click.echo(f"wrote {path}")
    chosen = next((p for p in paths if p.name == "robust-best.yaml"), None) if robust else None
    click.echo(f"retrain: study train --config {chosen or paths[0]}")


@cli.command()
@click.argument("name")
@click.option(
    "--top", type=int, default=3, show_default=True, help="How many of the best configs to re-run."
)
@click.option(
    "--seeds",
    type=int,
    default=3,
    show_default=True,
    help="New seeds per config (1000 onwards), trained as replicas in one trial per config.",
)
@click.option(
    "--neighbours", is_flag=True, help="Also re-run one-step neighbours of the best config."
)
@click.option(
    "--name",
    "robust_name",
    default=None,
    help="Name of the robustness study (default <name>-robust).",
)
@spec_options(StudySpec, "storage", "tracking_uri", "address")
@VERBOSE
def robustness(name, top, seeds, neighbours, robust_name, storage, tracking_uri, address, verbose):
    """Re-run the best configs of study NAME with new seeds (and neighbours), each config
    as one trial of --seeds replicas, then print and record (on NAME's MLflow parent run)
    its robust-best and config-vs-seed share."""
    from analysis.report import headline, load_analysis, record_analysis
    from study.robustness import run_robustness

    outcome = run_robustness(
        name,
        top,
        seeds,
        neighbours,
        storage,
        tracking_uri,
        address,
        robust_name,
        verbose,
    )
    print_where(outcome)
    spec = outcome.spec
    found = load_analysis(name, spec.tracking_uri, spec.experiment, spec.name)
    record_analysis(found)  # the figures, as metrics of NAME's parent run
    for line in headline(found):
        click.echo(line)
    click.echo(f"report:  study report {name}")


@cli.command()
@click.argument("name")
@click.option("--out", default=None, help="Directory (default reports/<name>).")
@click.option(
    "--notebook", is_flag=True, help="Also write an executed copy of the robustness notebook."
)
@spec_options(StudySpec, "tracking_uri", "experiment")
def report(name, out, notebook, tracking_uri, experiment):
    """Write how robust study NAME's result is, as HTML and Markdown (seed intervals, the
    config-vs-seed variance share, budget curves, importance, slices, degeneracy, images),
    and log it to the study's MLflow parent run."""
    from analysis.records import DEFAULT_EXPERIMENT
    from analysis.report import build_report
    from study.spec import check_study_name

    check_study_name(name)
    experiment = experiment or DEFAULT_EXPERIMENT
    path = build_report(name, tracking_uri, experiment, out or f"reports/{name}", notebook)
    click.echo(f"wrote {path}")
    click.echo(f"wrote {path.with_name('report.md')}")
    if notebook:
        click.echo(f"wrote {path.with_name('robustness.ipynb')}")


def browser_address(host: str, port: int) -> str:
    """Where a browser on this machine reaches a server bound to `host`."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@cli.command()
@click.argument("name", required=False)
@spec_options(StudySpec, "tracking_uri", "experiment")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Bind address; 0.0.0.0 exposes it to the network.",
)
@click.option("--port", type=int, default=5000, show_default=True)
def ui(name, tracking_uri, experiment, host, port):
    """Start the MLflow UI for the study store and print its URL (and, with NAME, a link
    to study NAME's runs)."""
    import shutil

    from analysis import records
    from study.spec import check_study_name

    uri = records.resolve_tracking_uri(tracking_uri)
    records.check_tracking_uri(uri)
    link = None
    if name:
        check_study_name(name)
        experiment = experiment or records.DEFAULT_EXPERIMENT
        client, experiment_id, parent = find_study_or_fail(uri, name, experiment)
        # Refreshed: a study from before the view existed gets one, an older one today's.
        records.write_study_view(client, records.StudyRecord.from_run(parent))
        link = records.study_runs_link(browser_address(host, port), experiment_id, name)
    mlflow = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    click.echo(f"MLflow UI at http://{host}:{port}  (store {uri}; Ctrl-C stops it)", err=False)
    if link:
        click.echo(f"study {name}: {link}")
    sys.stdout.flush()
    os.execv(
        # One worker: a local UI for one person needs no pool of four.
        mlflow,
        [
            mlflow,
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            host,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
    )


def find_study_or_fail(uri: str, name: str, experiment: str):
    """records.find_study, or a one-line error saying how to find the right name."""
    from analysis import records

    found = records.find_study(uri, name, experiment)
    if found is None:
        raise UserError(
            f"name: no study {name!r} in {records.redact(uri)} (experiment {experiment!r}); "
            f"check the name with `study status` or pass --tracking-uri"
        )
    return found


DASHBOARD_HOST = "127.0.0.1"  # the dashboard can edit the study: never on the network


@cli.command()
@click.argument("name")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@spec_options(StudySpec, "tracking_uri", "experiment")
@click.option(
    "--optuna-storage", metavar="URL", help="The Optuna storage (default: the one NAME recorded)."
)
def dashboard(name, port, tracking_uri, experiment, optuna_storage):
    """Start optuna-dashboard on the Optuna study of searched study NAME (on 127.0.0.1; it
    follows a running sweep live) and print its URL."""
    from analysis import records
    from analysis.optuna_record import optuna_storage_of
    from study.spec import check_study_name

    check_study_name(name)
    uri = records.resolve_tracking_uri(tracking_uri)
    records.check_tracking_uri(uri)
    experiment = experiment or records.DEFAULT_EXPERIMENT
    found = find_study_or_fail(uri, name, experiment)
    parent = records.StudyRecord.from_run(found[2])
    given = records.resolve_optuna_storage(optuna_storage, uri) if optuna_storage else None
    serve_dashboard(optuna_storage_of(parent, given), name, port)


def serve_dashboard(storage_url: str, name: str, port: int) -> None:
    """optuna-dashboard on `storage_url`, in this process, until Ctrl-C."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    import optuna
    import optuna_dashboard

    from analysis.records import redact

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Handler(WSGIRequestHandler):
        def log_message(self, format, *args):  # no line per request
            pass

    # The storage holds the study (checked), so opening it creates nothing.
    storage = optuna.storages.RDBStorage(storage_url, skip_table_creation=True)
    study_id = storage.get_study_id_from_name(name)
    app = optuna_dashboard.wsgi(storage)
    try:
        server = make_server(DASHBOARD_HOST, port, app, server_class=Server, handler_class=Handler)
    except OSError as error:
        raise UserError(
            f"port: cannot listen on {DASHBOARD_HOST}:{port} ({error.strerror}); pass another --port"
        ) from None
    click.echo(
        f"optuna-dashboard at http://{DASHBOARD_HOST}:{port}/dashboard/studies/{study_id}  "
        f"(study {name} in {redact(storage_url)}; Ctrl-C stops it)"
    )
    sys.stdout.flush()
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopped")


@cli.command()
def families():
    """List every family: built in, from an installed package's entry point, or from a
    module (--family-module), with its search space."""
    from trainables.registry import broken_plugins, registered

    for name, entry in registered().items():
        click.echo(f"{name}  [{entry.origin}]  {entry.family.summary}")
        echo_space(name, indent="  ")
    for plugin in broken_plugins():
        click.echo(f"{plugin.name}  [{plugin.origin}]  BROKEN: {plugin.error}")


def echo_space(name: str, indent: str = "") -> None:
    """The family's default search space, or why it has none."""
    from search_spaces.loader import load_space

    try:
        space = load_space(name)
    except UserError as error:
        click.echo(f"{indent}no search space: {error}")
        return
    click.echo(f"{indent}space: {space.source}")
    for line in space.describe():
        click.echo(f"{indent}  {line}")


@cli.command("check-family")
@click.argument("target", metavar="NAME|pkg.module")
@click.option("-v", "--verbose", is_flag=True, help="Show pytest's own report too.")
def check_family_command(target, verbose):
    """Run the contract every family must meet on one family, a registered NAME or a
    module pkg.module that defines FAMILY; print each rule that fails. Exit 0 only when
    every rule holds."""
    from study.check_family import check_family

    outcome = check_family(target, verbose, echo=click.echo)
    sys.exit(0 if outcome.ok else 1)


@cli.command()
@click.argument("family", required=False)
def spaces(family):
    """Show the search space of FAMILY (or of every family)."""
    from trainables import all_families, get_family

    for name in [get_family(family).name] if family else list(all_families()):
        click.echo(name)
        echo_space(name, indent="  ")


@cli.group()
def data():
    """Make datasets."""


@data.command()
@click.option("--out", required=True, help="Directory to write the file into (made if missing).")
@click.option(
    "--grid",
    metavar="FACTOR=COUNT,...",
    help="Values per factor, of shape (1-3), scale, orientation, x, y "
    "[default: shape=3,scale=6,orientation=40,x=32,y=32, the official grid].",
)
@click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
def shapes(out, grid, size):
    """Render dSprites (the official file's format and factors) into OUT, for
    `--dataset dsprites --data-dir OUT`. The default grid gives the official file's name
    and 737,280 images, 3 GB in memory while rendering."""
    import time

    from trainables.shapes import parse_grid, write_shapes

    chosen = parse_grid(grid, size)
    started = time.monotonic()
    path = write_shapes(out, chosen)
    click.echo(f"{path}: {chosen.count:,} images in {time.monotonic() - started:.1f} s")


@cli.command()
@click.option("--trials", type=int, default=4, show_default=True)
@click.option("--epochs", type=int, default=6, show_default=True)
@click.option("-v", "--verbose", is_flag=True)
def demo(trials, epochs, verbose):
    """The main job on the embedded defaults: a short sweep of each family on digits."""
    import time

    from study.execute import execute
    from study.plan import plan_search
    from study.spec import StudySpec
    from trainables.registry import builtin_families

    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = []
    for family in builtin_families():
        spec = StudySpec(family=family, name=f"demo-{family}-{stamp}", trials=trials, epochs=epochs)
        click.echo(
            f"\n== {family}: {trials} trials x {epochs} epochs on digits ({', '.join(spec.objectives)})"
        )
        outcome = execute(plan_search(spec, verbose), verbose)
        names.append(spec.name)
    click.echo("\nDone. Results:")
    click.echo(f"  ray results: {outcome.spec.storage}/{{{','.join(names)}}}")
    click.echo(f"  mlflow:      {outcome.spec.tracking_uri}")
    click.echo(f"  open the UI: .venv/bin/study ui {names[0]}   (prints the link to its runs)")
    click.echo(
        f"  best config: .venv/bin/study export {names[0]}  &&  .venv/bin/study train --config exports/{names[0]}/best.yaml"
    )


def format_metrics(metrics: dict[str, float]) -> str:
    """One line per metric; with seed replicas, the mean, its bootstrap bounds, the std
    and each seed's value."""
    from analysis.records import base_metric, parse_seed_metric, stat_metric

    per_seed: dict[str, list[float]] = {}
    for key, value in metrics.items():
        if (parsed := parse_seed_metric(key)) is not None:
            per_seed.setdefault(parsed[1], []).append(value)
    if not per_seed:
        width = max(len(k) for k in metrics)
        return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())
    width = max(len(k) for k in per_seed)
    lines = [f"  {'metric':<{width}}  {'mean':>8}  {'95% bounds':>17}  {'std':>7}  seeds"]
    for name, values in per_seed.items():
        low, high, std = (metrics.get(stat_metric(name, s)) for s in ("lower", "upper", "std"))
        bounds = f"[{low:.4f}, {high:.4f}]" if low is not None else ""
        spread = f"{std:.4f}" if std is not None else ""
        seeds = " ".join(f"{v:.4f}" for v in values)
        lines.append(f"  {name:<{width}}  {metrics[name]:8.4f}  {bounds:>17}  {spread:>7}  {seeds}")
    # What no seed reports (the run's timings): one value each.
    others = [k for k in metrics if base_metric(k, per_seed) is None]
    lines += [f"  {k:<{width}}  {metrics[k]:8.4f}" for k in others]
    return "\n".join(lines)


def main() -> None:
    """The `study` console script."""
    from study.cluster import exit_after_ray

    try:
        cli(prog_name="study")
    except SystemExit as done:
        exit_after_ray(done.code)
        raise
    exit_after_ray(0)


if __name__ == "__main__":
    main()

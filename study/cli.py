"""The `study` command line. Each command validates its input into a spec first, so a typo
costs one line and exit status 2, and nothing is written."""

from __future__ import annotations

import json
import logging
import os
import sys

# Small models on few cores: a spinning OpenMP pool that has to share its cores with
# another process slows training by an order of magnitude (measured: 40 s vs 0.8 s for a
# digits AAE). Set before torch loads; Ray's local workers inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402

from study.errors import UserError  # noqa: E402
from study.spec import TrainSpec, parse_overrides  # noqa: E402
from trainables import DATASETS  # noqa: E402
from trainables.experiment import PRECISIONS  # noqa: E402

DEVICE_CHOICES = ("auto", "cpu", "cuda")


class StudyGroup(click.Group):
    """Turns every user error, click's included, into one line on stderr and exit 2."""

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


def data_options(command):
    command = click.option(
        "--download", is_flag=True, help="Fetch MNIST-style data with torchvision."
    )(command)
    command = click.option(
        "--data-dir",
        envvar="LATENT_STUDIES_DATA_DIR",
        help="Directory holding the idx .gz files (or $LATENT_STUDIES_DATA_DIR).",
    )(command)
    return command


@click.group(cls=StudyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="latent-studies")
def cli() -> None:
    """Hyperparameter and robustness studies of disentangled and invariant autoencoders."""


@cli.command()
@click.argument("family", required=False)
@click.option(
    "--config",
    "config_file",
    help="YAML file (e.g. an export) with family, dataset, epochs, seed, params.",
)
@click.option("--dataset", type=click.Choice(DATASETS), help="Dataset (default digits).")
@click.option("--epochs", type=int, help="Training epochs (default 20).")
@click.option("--seed", type=int, help="Seed for weights, batches and noise (default 0).")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a family parameter; repeatable.",
)
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Training arithmetic (default fp32); bf16 = bfloat16 autocast, for GPUs.",
)
@data_options
@click.option(
    "--out", help="Output directory (default runs/train/<family>-<dataset>-seed<S>-<time>)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@click.option(
    "--preset",
    help="Run a reproduction preset: its variants at several seeds (see `study presets`).",
)
@click.option("--seeds", type=int, help="With --preset: how many seeds (default the preset's).")
def train(
    family,
    config_file,
    dataset,
    epochs,
    seed,
    overrides,
    device,
    precision,
    data_dir,
    download,
    out,
    as_json,
    preset,
    seeds,
):
    """Train one model of FAMILY and report its metrics, or a reproduction preset's runs."""
    from study.train import train_once

    if preset or seeds is not None:
        train_preset(click.get_current_context().params)
        return

    spec = TrainSpec.from_sources(
        family,
        config_file,
        parse_overrides(overrides),
        dataset=dataset,
        epochs=epochs,
        seed=seed,
        precision=precision,
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
    if not name:
        raise UserError("seeds: --seeds goes with --preset NAME; for one run use --seed")
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
        params=parse_overrides(options["overrides"]),
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
@click.argument("name", required=False)
def presets(name):
    """List the presets shipped with the package, or print preset NAME's YAML."""
    from study.presets import all_presets, load_preset

    if name:
        click.echo(load_preset(name).path.read_text(), nl=False)
        return
    for preset in all_presets():
        size = (
            f"{len(preset.variants)} variants x {preset.seeds} seeds x {preset.epochs} epochs"
            + (f", ~{preset.cpu_minutes:g} min on 2 CPU cores" if preset.cpu_minutes else "")
            if preset.kind == "reproduction"
            else f"{preset.sweep.get('trials')} trials"
            + (f", ~{preset.gpu_hours:g} GPU-hour" if preset.gpu_hours else "")
        )
        click.echo(
            f"{preset.name:<22} {preset.kind:<12} {preset.family:<6} {preset.dataset:<14} {size}"
        )
        click.echo(f"{'':<22} {preset.description.splitlines()[0]}")


def sweep_options(command):
    for option in reversed(
        [
            click.option(
                "--storage",
                default=None,
                help="Ray results: a path or URI such as s3://bucket/dir (default ./ray_results).",
            ),
            click.option(
                "--tracking-uri",
                default=None,
                help="MLflow store (default sqlite:///mlflow.db or $MLFLOW_TRACKING_URI).",
            ),
            click.option(
                "--address",
                default=None,
                help="Ray cluster: 'auto', host:port or ray://host:port (default: start Ray locally).",
            ),
            click.option("-v", "--verbose", is_flag=True, help="Show Ray's own logs and progress."),
        ]
    ):
        command = option(command)
    return command


@cli.command()
@click.argument("family", required=False)
@click.option("--dataset", type=click.Choice(DATASETS), default="digits", show_default=True)
@click.option(
    "--trials", type=int, default=8, show_default=True, help="Number of trials Optuna proposes."
)
@click.option(
    "--epochs",
    type=int,
    default=10,
    show_default=True,
    help="Epochs per trial (ASHA may stop a trial sooner).",
)
@click.option(
    "--objective",
    "objectives",
    multiple=True,
    metavar="METRIC:max|min",
    help="Repeatable; default: the family's.",
)
@click.option("--scheduler", type=click.Choice(["asha", "none"]), default="asha", show_default=True)
@click.option(
    "--grace-period",
    type=int,
    default=2,
    show_default=True,
    help="ASHA: epochs before a trial may be stopped.",
)
@click.option(
    "--concurrency",
    type=int,
    default=None,
    help="Trials running at once (default: as resources allow).",
)
@click.option("--cpus-per-trial", type=float, default=1.0, show_default=True)
@click.option(
    "--gpus-per-trial",
    type=float,
    default=0.0,
    show_default=True,
    help="Fractions share a GPU (e.g. 0.25).",
)
@click.option("--name", default=None, help="Study name (default <family>-<dataset>-<time>).")
@click.option(
    "--space",
    "space_file",
    default=None,
    help="Search-space YAML (default search_spaces/<family>.yaml).",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Hold a parameter fixed; repeatable.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the sampler and of every trial."
)
@click.option(
    "--experiment", default="latent-studies", show_default=True, help="MLflow experiment."
)
@click.option(
    "--eval-every", type=int, default=1, show_default=True, help="Epochs between full evaluations."
)
@click.option(
    "--max-failures",
    type=int,
    default=2,
    show_default=True,
    help="Retries of a crashed trial from its checkpoint.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="fp32",
    show_default=True,
    help="Training arithmetic; bf16 = bfloat16 autocast, for GPU trials.",
)
@click.option(
    "--preset", help="Take the settings of a sweep preset (see `study presets`); flags override."
)
@data_options
@sweep_options
@click.pass_context
def run(ctx: click.Context, **given):
    """Sweep FAMILY's hyperparameters with Optuna on Ray Tune, recording every trial in MLflow."""
    from study.sweep import DEFAULT_STORAGE, StudySpec, run_study

    options = preset_sweep_settings(ctx, given["preset"]) if given["preset"] else given
    if not options["family"]:
        raise UserError("family: name one (e.g. `study run mlvae`) or use --preset NAME")
    spec = StudySpec(
        family=options["family"],
        name=options["name"] or "",
        objectives=list(options["objectives"]),
        storage=options["storage"] or DEFAULT_STORAGE,
        tracking_uri=options["tracking_uri"] or "",
        fixed=parse_overrides(options["overrides"]),
        **{key: options[key] for key in STUDY_OPTIONS},
    )
    if options["download"]:  # after the spec is valid: a typo must not cost a download
        from trainables import load_dataset

        load_dataset(spec.dataset, spec.data_dir, download=True)
    outcome = run_study(spec, verbose=options["verbose"])
    print_where(outcome)


# `study run` options that go into the StudySpec under their own names.
STUDY_OPTIONS = (
    "dataset",
    "trials",
    "epochs",
    "scheduler",
    "grace_period",
    "concurrency",
    "cpus_per_trial",
    "gpus_per_trial",
    "address",
    "experiment",
    "space_file",
    "seed",
    "data_dir",
    "eval_every",
    "max_failures",
    "precision",
)


def preset_sweep_settings(ctx: click.Context, name: str) -> dict:
    """`study run`'s options with a sweep preset's values wherever the command line left
    the default; the preset's `params` are held fixed, and `--set` overrides them."""
    from study.presets import load_preset

    preset = load_preset(name)
    if preset.kind != "sweep":
        raise UserError(
            f"preset: {name} is a {preset.kind} preset; run it with `study train --preset {name}`"
        )
    settings = dict(ctx.params)
    if settings["family"] not in (None, preset.family):
        raise UserError(
            f"family: preset {name} is for {preset.family!r}, not {settings['family']!r}; drop FAMILY"
        )
    settings["family"] = preset.family
    from_preset = {"dataset": preset.dataset, **preset.sweep}
    if "space_file" in from_preset:
        from study.presets import presets_dir

        from_preset["space_file"] = str(presets_dir() / from_preset["space_file"])
    for key, value in from_preset.items():
        if ctx.get_parameter_source(key) == click.core.ParameterSource.DEFAULT:
            settings[key] = tuple(value) if key == "objectives" else value
    fixed = [f"{k}={json.dumps(v)}" for k, v in preset.params.items()]
    settings["overrides"] = (*fixed, *settings["overrides"])
    return settings


def print_where(outcome) -> None:
    from study.tracking import redact

    spec = outcome["spec"]
    click.echo(f"results: {spec.path}")
    click.echo(
        f"mlflow:  {redact(spec.tracking_uri)} (experiment {spec.experiment!r}, parent run {outcome['parent_run_id']})"
    )
    click.echo(f"next:    study ui   |   study status {spec.name}   |   study export {spec.name}")


@cli.command()
@click.argument("name")
@click.option("--storage", default="ray_results", show_default=True)
@click.option(
    "--address", default=None, help="Ray cluster to resume on (default: the study's own)."
)
@click.option("-v", "--verbose", is_flag=True)
def resume(name, storage, address, verbose):
    """Continue the interrupted study NAME to its requested trial count."""
    from study.sweep import resume_study

    print_where(resume_study(name, storage, address, verbose))


@cli.command()
@click.argument("name", required=False)
@click.option("--storage", default="ray_results", show_default=True)
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default="latent-studies", show_default=True)
def status(name, storage, tracking_uri, experiment):
    """List studies, or show NAME's trials by status and its best results so far."""
    from study.sweep import list_studies, read_spec

    if not name:
        studies = list_studies(storage)
        if not studies:
            click.echo(f"no studies in {storage}")
        for spec in studies:
            click.echo(
                f"{spec.name:<40} {spec.family:<6} {spec.dataset:<14} {spec.trials:>4} trials  {spec.path}"
            )
        return
    from analysis.runs import load_study, ranked

    spec = read_spec(name, storage)
    study = load_study(name, tracking_uri or spec.tracking_uri, experiment)
    trials = study.trials
    counts = trials["status"].value_counts().to_dict() if not trials.empty else {}
    click.echo(
        f"study {name}: {spec.family} on {spec.dataset}, {len(trials)}/{spec.trials} trials in MLflow"
    )
    click.echo(
        "  " + ", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
        if counts
        else "  no trials yet"
    )
    for metric, mode in study.objectives:
        best = ranked(study, metric, mode)
        if not best.empty:
            click.echo(
                f"  best {metric} ({mode}): {best.iloc[0][metric]:.4f}  trial {best.iloc[0]['trial_id']}"
            )
    click.echo(f"  results: {spec.path}")


@cli.command()
@click.argument("name")
@click.option(
    "--top", type=int, default=1, show_default=True, help="Also export the K best trials."
)
@click.option("--out", default=None, help="Directory (default exports/<name>).")
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default="latent-studies", show_default=True)
def export(name, top, out, tracking_uri, experiment):
    """Write the best trials of study NAME as configs `study train --config` accepts."""
    from analysis.export import export_study
    from analysis.runs import load_study
    from study.spec import check_study_name

    check_study_name(name)
    if top < 1:
        raise UserError(f"top: expected a whole number >= 1, got {top}")
    study = load_study(name, tracking_uri, experiment)
    try:
        robust = load_study(f"{name}-robust", tracking_uri, experiment)
    except UserError:
        robust = None  # no robustness run: no robust-best.yaml
    paths = export_study(study, out or f"exports/{name}", top, robust)
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(f"retrain: study train --config {paths[0]}")


@cli.command()
@click.argument("name")
@click.option(
    "--top", type=int, default=3, show_default=True, help="How many of the best configs to re-run."
)
@click.option("--seeds", type=int, default=3, show_default=True, help="New seeds per config.")
@click.option(
    "--neighbours", is_flag=True, help="Also re-run one-step neighbours of the best config."
)
@click.option(
    "--name",
    "robust_name",
    default=None,
    help="Name of the robustness study (default <name>-robust).",
)
@sweep_options
def robustness(name, top, seeds, neighbours, robust_name, storage, tracking_uri, address, verbose):
    """Re-run the best configs of study NAME with new seeds (and neighbours)."""
    from study.robustness import run_robustness
    from study.sweep import DEFAULT_STORAGE

    outcome = run_robustness(
        name,
        top,
        seeds,
        neighbours,
        storage or DEFAULT_STORAGE,
        tracking_uri,
        address,
        robust_name,
        verbose,
    )
    print_where(outcome)
    click.echo(f"report:  study report {name}")


@cli.command()
@click.argument("name")
@click.option("--out", default=None, help="Directory (default reports/<name>).")
@click.option("--tracking-uri", default=None)
@click.option("--experiment", default="latent-studies", show_default=True)
def report(name, out, tracking_uri, experiment):
    """Write an HTML report (importance, slices with seed bands, Pareto front, degeneracy, images)."""
    from analysis.report import build_report
    from study.spec import check_study_name

    check_study_name(name)
    path = build_report(name, tracking_uri, experiment, out or f"reports/{name}")
    click.echo(f"wrote {path}")


@cli.command()
@click.option("--tracking-uri", default=None)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Bind address; 0.0.0.0 exposes it to the network.",
)
@click.option("--port", type=int, default=5000, show_default=True)
def ui(tracking_uri, host, port):
    """Start the MLflow UI for the study store and print its URL."""
    import os
    import shutil

    from study.tracking import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    check_tracking_uri(uri)
    mlflow = shutil.which("mlflow") or os.path.join(os.path.dirname(sys.executable), "mlflow")
    click.echo(f"MLflow UI at http://{host}:{port}  (store {uri}; Ctrl-C stops it)", err=False)
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


@cli.command()
@click.argument("family", required=False)
def spaces(family):
    """Show the search space of FAMILY (or of every family)."""
    from search_spaces.loader import load_space
    from trainables import all_families, get_family

    names = [get_family(family).name] if family else list(all_families())
    for name in names:
        space = load_space(name)
        click.echo(f"{name}  ({space.source})")
        for line in space.describe():
            click.echo(f"  {line}")


@cli.command()
@click.option("--trials", type=int, default=4, show_default=True)
@click.option("--epochs", type=int, default=6, show_default=True)
@click.option("-v", "--verbose", is_flag=True)
def demo(trials, epochs, verbose):
    """The main job on the embedded defaults: a short sweep of each family on digits."""
    import time

    from study.sweep import StudySpec, run_study
    from trainables import all_families

    stamp = time.strftime("%Y%m%d-%H%M%S")
    names = []
    for family in all_families():
        spec = StudySpec(family=family, name=f"demo-{family}-{stamp}", trials=trials, epochs=epochs)
        click.echo(
            f"\n== {family}: {trials} trials x {epochs} epochs on digits ({', '.join(spec.objectives)})"
        )
        outcome = run_study(spec, verbose=verbose)
        names.append(spec.name)
    click.echo("\nDone. Results:")
    click.echo(f"  ray results: {outcome['spec'].storage}/{{{','.join(names)}}}")
    click.echo(f"  mlflow:      {outcome['spec'].tracking_uri}")
    click.echo("  open the UI: .venv/bin/study ui   (then http://127.0.0.1:5000)")
    click.echo(
        f"  best config: .venv/bin/study export {names[0]}  &&  .venv/bin/study train --config exports/{names[0]}/best.yaml"
    )


def format_metrics(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())


def main() -> None:
    try:
        cli(prog_name="study")
    except SystemExit as done:
        _exit_after_ray(done.code)
        raise
    _exit_after_ray(0)


def _exit_after_ray(code: int | str | None) -> None:
    """After a command that started or joined Ray: stop Ray, flush, and end the process
    without the interpreter's teardown (Ray's core worker, torch, hundreds of modules),
    which took 2 s of every sweep's exit. By now every write is made: MLflow's calls are
    synchronous, and Tuner.fit returns after saving and syncing its experiment state."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    ray.shutdown()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)


if __name__ == "__main__":
    main()

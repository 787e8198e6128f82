"""evaluate: Recall@k on the test pairs (paper section 5.1) of NoteLLM, the challenger and the baselines;
generation metrics."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(config: str, model: Input[Model], notes: Input[Dataset], pairs: Input[Dataset],
             embeddings: Input[Dataset], challenger_embeddings: Input[Dataset], challenger: bool,
             metrics: Output[Metrics], table: Output[Markdown],
             recall_plot: Output[HTML]) -> NamedTuple("Evaluation", [("recall", float), ("reference_recall", float),
                                                                   ("reference", str), ("metric", str)]):
    """The results table (Markdown: NoteLLM, the challenger when trained, the baselines) and recall@k curves
    (HTML) show in the run; NoteLLM's test recall against the first baseline's is the step's key figure."""
    import base64
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    with tempfile.TemporaryDirectory() as tmp:
        summary = steps.evaluate(config_from_yaml(config), Path(model.path), Path(notes.path), Path(pairs.path),
                                 Path(embeddings.path), Path(tmp),
                                 Path(challenger_embeddings.path) if challenger else None)
        shutil.copyfile(Path(tmp) / "results.md", table.path)
        png = base64.b64encode((Path(tmp) / "recall_at_k.png").read_bytes()).decode()
    Path(recall_plot.path).write_text(f'<html><body><h2>Recall@k</h2>'
                                      f'<img src="data:image/png;base64,{png}"/></body></html>')
    log_metrics(metrics, {**summary["metrics"], "step_seconds": summary["step_seconds"]})
    key = next(k for k in summary if k.startswith("recall_at_"))
    return namedtuple("Evaluation", ["recall", "reference_recall", "reference", "metric"])(
        summary[key], summary["reference_recall"], summary["reference"], "R@" + key.removeprefix("recall_at_"))

"""check_drift: Evidently drift report on note features and embeddings, reference vs current window."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Output

from components import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def check_drift(config: str, notes: Input[Dataset], embeddings: Input[Dataset], report: Output[HTML],
                summary: Output[Metrics], details: Output[Artifact],
                reference_data: str = "") -> NamedTuple("Drift", [("passed", bool), ("reasons", str)]):
    """The verdict (``passed``) and its reasons; the HTML report shows in the run's Visualizations."""
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from notellm import steps
    from notellm.kfp_io import config_from_yaml, log_metrics

    with tempfile.TemporaryDirectory() as tmp:
        result = steps.check_drift(config_from_yaml(config), Path(notes.path),
                                   Path(embeddings.path) / steps.EMBEDDINGS_FILE, Path(tmp),
                                   Path(reference_data) if reference_data else None)
        shutil.copyfile(Path(tmp) / "drift_report.html", report.path)
        shutil.copyfile(Path(tmp) / "drift_summary.json", details.path)
    log_metrics(summary, {"passed": result["passed"], **result["metrics"],
                          "step_seconds": result["step_seconds"]})
    return namedtuple("Drift", ["passed", "reasons"])(result["passed"], "; ".join(result["reasons"]))

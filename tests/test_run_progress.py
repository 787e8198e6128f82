"""A quiet `notellm run`: one line per step, kfp.local's chatter and its local no-op warnings in run.log,
real warnings and a failed task's traceback still shown; verbose shows everything. Real kfp.local runs of
two small components (no ``from __future__ import annotations``: kfp reads the components' annotations)."""

import pytest
from kfp import dsl, local

from components import BASE_IMAGE
from pipelines.progress import key_figure, quiet_run

pytestmark = pytest.mark.slow


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def chatty(n: int) -> int:
    import warnings

    print("a line of task chatter")
    warnings.warn("the disk is nearly full", UserWarning)
    return n + 1


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def broken(n: int) -> int:
    raise ValueError(f"bad input {n}")


@dsl.pipeline(name="progress-ok")
def ok_pipeline() -> None:
    first = chatty(n=1).set_cpu_limit("2").set_memory_limit("1G")  # no effect locally: kfp.local warns
    chatty(n=first.output).set_display_name("second")


@dsl.pipeline(name="progress-fails")
def failing_pipeline() -> None:
    broken(n=chatty(n=1).output)


def _run(tmp_path, pipeline, verbose=False):
    with quiet_run(tmp_path, verbose):
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"),
                   raise_on_error=True)
        pipeline()


def test_quiet_run_shows_steps_and_real_warnings_only(tmp_path, capsys):
    _run(tmp_path, ok_pipeline)
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines[:-1]] == ["chatty", "chatty-2"]
    assert all(" s  ok" in line for line in lines[:-1]) and lines[-1] == f"full log: {tmp_path / 'run.log'}"
    assert err.count("the disk is nearly full") == 1  # a real warning, shown once for two tasks
    assert "no effect" not in err + out and "non-Python base image" not in err + out
    assert "task chatter" not in out
    log = (tmp_path / "run.log").read_text()
    assert "Executing task" in log and "a line of task chatter" in log and "have no effect" in log


def test_a_failed_step_shows_its_traceback(tmp_path, capsys):
    with pytest.raises(RuntimeError, match="FAILURE"):
        _run(tmp_path, failing_pipeline)
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split()[:4] == ["chatty", out.split()[1], "s", "ok"]
    assert "broken" in out and "FAILURE" in out
    assert "--- last lines of broken:" in err and "ValueError: bad input 2" in err


def test_verbose_shows_everything(tmp_path, capsys):
    with pytest.warns(UserWarning, match="have no effect in the current local runner"), \
            pytest.warns(RuntimeWarning, match="non-Python base image"):
        _run(tmp_path, ok_pipeline, verbose=True)
    out, _ = capsys.readouterr()
    assert "Executing task" in out and "a line of task chatter" in out
    assert not (tmp_path / "run.log").exists()


def test_key_figures_of_the_steps():
    assert key_figure("mine-pairs", {"pairs": 6.0, "pairs_per_split.train": 4.0, "pairs_per_split.val": 1.0,
                                     "pairs_per_split.test": 1.0}) == "6 pairs: 4 train, 1 val, 1 test"
    assert key_figure("embed", {"notes": 1200.0, "truncation.content_truncated": 30.0}) == \
        "1,200 notes embedded, 30 with truncated content"
    evaluated = {"metric": "R@100", "recall": 0.2, "reference_recall": 0.1, "reference": "the baseline"}
    assert key_figure("evaluate", evaluated) == "R@100 20.00 against 10.00 (the baseline)"
    assert key_figure("finetune", {}) == "" and key_figure("make-config", {"Output": "x"}) == ""
    challenger = {"trained": 1.0, "steps": 60.0, "pairs_seen": 1920.0, "first_loss": 2.5, "final_loss": 1.25}
    assert key_figure("finetune-challenger", challenger) == "MiniLM, 60 steps (1,920 pairs), loss 2.500 -> 1.250"
    assert key_figure("finetune-challenger", {"trained": 0.0}) == "off"

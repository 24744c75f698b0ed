"""`wavflow` exit statuses: a short message for the user's errors, a traceback for the program's
bugs."""

from __future__ import annotations

import pytest

from wavflow import cli
from wavflow.checkpoint import CheckpointError
from wavflow.data import DataError
from wavflow.training import TrainingError


def test_a_recipe_error_is_one_line_and_status_2(tmp_path, capsys):
    code = cli.main(["train-teacher", "--data", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "wavflow train-teacher: error: --recipe is required (or --resume in a run folder with "
        "recipe.toml)\n"
    )


@pytest.mark.parametrize("error", [DataError, CheckpointError, TrainingError])
def test_the_projects_errors_are_the_users(error, monkeypatch, tmp_path, capsys):
    def fail(args):
        raise error("what went wrong, and how to fix it")

    monkeypatch.setattr(cli, "_run_corpus", fail)
    assert cli.main(["corpus", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "wavflow corpus: error: what went wrong, and how to fix it\n"


@pytest.mark.parametrize("error", [ValueError, KeyError, RuntimeError])
def test_a_bug_raises_with_its_traceback(error, monkeypatch, tmp_path):
    def bug(args):
        raise error("a bug in wavflow")

    monkeypatch.setattr(cli, "_run_corpus", bug)
    with pytest.raises(error, match="a bug in wavflow"):
        cli.main(["corpus", str(tmp_path)])

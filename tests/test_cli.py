"""`wavflow` exit statuses: a short message for the user's errors, a traceback for the program's
bugs."""

from __future__ import annotations

import pytest

from wavflow import cli
from wavflow.checkpoint import CheckpointError
from wavflow.config import OptionError
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


@pytest.mark.parametrize("error", [DataError, CheckpointError, TrainingError, OptionError])
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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bench", "--out", "OUT", "--methods", "nope"], "unknown bench method 'nope'"),
        (["corpus", "OUT", "--minutes", "0"], "minutes must be > 0"),
    ],
)
def test_bad_options_are_one_line_errors(argv, message, tmp_path, capsys):
    """Options the argument parser cannot check still end in the short message, not a
    traceback."""
    argv = [str(tmp_path / a) if a == "OUT" else a for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wavflow {argv[0]}: error: {message}") and "Traceback" not in err

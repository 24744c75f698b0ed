"""Progress for people: a live bar on a terminal, a few whole lines in a log."""

from __future__ import annotations

import io
import re
from pathlib import Path

from tqdm import tqdm

from wavflow import progress
from wavflow.config import load_recipe
from wavflow.objectives import likelihood_objective
from wavflow.progress import LineProgress, progress_bar

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_teacher.toml"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_line_every_tenth_and_none_redrawn():
    out = io.StringIO()
    report = LineProgress(range(25), desc="work", unit="utt", file=out, every_seconds=1e9)
    assert list(report) == list(range(25))
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    counts = [int(re.search(r" (\d+)/25 ", line).group(1)) for line in lines]
    assert counts == [3, 6, 9, 12, 15, 18, 21, 24, 25]  # every ceil(25 / 10), then the end
    assert all(line.startswith("work: ") and "utt/s" in line for line in lines)


def test_a_slow_run_gets_a_line_every_interval_and_shows_its_postfix():
    out = io.StringIO()
    report = LineProgress(total=1000, desc="train", file=out, initial=500, every_seconds=0.0)
    for _ in range(3):
        report.update()
        report.set_postfix(loss="0.125")
    report.close()
    report.close()  # closing twice writes nothing more
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["501/1000", "502/1000", "503/1000"]
    assert lines[0].endswith("it/s]") and lines[-1].endswith("loss=0.125]")


def test_a_terminal_gets_tqdm_and_disabled_progress_writes_nothing(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr", _Terminal())
    assert isinstance(progress_bar(total=3, desc="x"), tqdm)
    monkeypatch.undo()
    assert isinstance(progress_bar(total=3, desc="x"), LineProgress)  # capsys: not a terminal
    assert list(progress_bar(range(4), desc="quiet", disable=True)) == [0, 1, 2, 3]
    assert capsys.readouterr().err == ""


def test_training_into_a_log_writes_ten_progress_lines(prepared_dir, tmp_path, monkeypatch, capsys):
    from wavflow.checkpoint import build_teacher
    from wavflow.training import train

    monkeypatch.setattr(progress, "LINE_EVERY_SECONDS", 1e9)  # only the step count decides
    recipe = load_recipe(TINY, ["train.steps=20", "train.eval_every=1000", "train.log_every=5"])
    objective = likelihood_objective("teacher", build_teacher(recipe), recipe.features)
    train(objective, recipe, prepared_dir, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("teacher: ")]
    assert len(lines) == 10, err
    assert " 20/20 " in lines[-1] and "step/s" in lines[-1] and "loss=" in lines[-1]


def test_every_progress_report_goes_through_progress_bar():
    """A bare tqdm elsewhere in the package would bring the redraws back into logs."""
    package = ROOT / "wavflow"
    users = [
        p for p in package.rglob("*.py") if "tqdm" in p.read_text() and p.name != "progress.py"
    ]
    assert users == []

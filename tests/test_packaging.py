"""The package works as a package: data files inside it, light imports, a wheel that runs."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from test_demo import TINY

from wavflow import demo
from wavflow.generation import kernel

ROOT = Path(__file__).resolve().parents[1]


def test_data_files_live_inside_the_package() -> None:
    package = Path(demo.__file__).resolve().parent
    assert demo.DEFAULT_RECIPE.is_file()
    assert demo.DEFAULT_RECIPE.resolve().read_text() == (ROOT / "recipes" / "demo.toml").read_text()
    assert demo.DEFAULT_RECIPE.parent.parent.resolve() in {package, ROOT}
    assert 'extern "C" int wavflow_run' in kernel.kernel_source()


def test_synthesis_and_evaluation_leave_training_and_pyplot_alone() -> None:
    """Importing them pulls in neither the training stack (TensorBoard, DDP) nor pyplot, so no
    matplotlib backend is chosen behind the application's back."""
    probe = (
        "import sys, wavflow.synthesis, wavflow.evaluation; "
        "print(sorted(m for m in ('wavflow.training', 'torch.utils.tensorboard', "
        "'matplotlib.pyplot') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the checkout, built once for this module's tests."""
    wheels = tmp_path_factory.mktemp("wheels")
    subprocess.run(
        [*PIP, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        cwd=wheels,
    )
    (built,) = wheels.glob("wavflow-*.whl")
    return built


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_the_demo(tmp_path: Path, wheel: Path) -> None:
    """Build a wheel, install it (without dependencies: they come from this environment) into a
    folder outside the checkout, and run `wavflow demo` from there on a tiny budget: its
    default recipe and the kernel's source must come from the installed package."""
    site = tmp_path / "site"
    subprocess.run([*PIP, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = os.environ | {"PYTHONPATH": str(site), "WAVFLOW_CACHE_DIR": str(tmp_path / "kernels")}
    where = subprocess.run(
        [sys.executable, "-c", "import wavflow; print(wavflow.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=env,
    )
    assert Path(where.stdout.strip()).is_relative_to(site)
    overrides = [arg for item in TINY for arg in ("--set", item)]
    command = [sys.executable, "-m", "wavflow", "demo", "--out", "demo", "--no-bench", "--quiet"]
    subprocess.run([*command, *overrides], check=True, cwd=tmp_path, env=env, timeout=1200)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| iaf |" in report and "| teacher |" in report
    assert list((tmp_path / "kernels").glob("wavflow_step_*.so"))  # built from the wheel's source


@pytest.mark.slow
def test_a_wheel_in_a_fresh_venv_runs_corpus_train_teacher_and_synthesize(
    tmp_path: Path, wheel: Path
) -> None:
    """The wheel installed into a fresh venv outside the checkout, its `wavflow` entry point run
    as a user would: write a corpus, prepare it, train the tiny teacher from the recipe the
    wheel ships, and synthesise with its checkpoint.

    The venv has no network, so it reads the dependencies from this environment's
    site-packages through a path file, written after the install so that pip sees an empty
    venv. A path listed there is only appended to sys.path (its own .pth files, this
    checkout's editable install among them, are not run), so `wavflow` resolves to the wheel.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([*PIP, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)
    (fresh_site,) = (venv / "lib").glob("python*/site-packages")
    (fresh_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    } | {"WAVFLOW_CACHE_DIR": str(tmp_path / "kernels")}

    def run(*command: str) -> str:
        result = subprocess.run(
            command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    where = run(str(python), "-c", "import wavflow; print(wavflow.__file__)")
    assert Path(where.strip()).is_relative_to(fresh_site)
    shipped = run(str(python), "-c", "from wavflow import demo; print(demo.DEFAULT_RECIPE)")
    recipe = Path(shipped.strip()).with_name("tiny_teacher.toml")
    assert recipe.is_relative_to(fresh_site) and recipe.is_file()
    wavflow = str(venv / "bin" / "wavflow")
    run(wavflow, "corpus", "corpus", "--minutes", "0.3", "--speakers", "2", "--seed", "1")
    run(wavflow, "prepare", "--recipe", str(recipe), "corpus", "prepared", "--quiet")
    short = ("train.steps=4", "train.eval_every=4", "train.checkpoint_every=4")
    overrides = [arg for item in short for arg in ("--set", item)]
    folders = ("--data", "prepared", "--out", "run", "--quiet")
    run(wavflow, "train-teacher", "--recipe", str(recipe), *overrides, *folders)
    checkpoint = tmp_path / "run" / "ckpt_00000004.pt"
    (audio, *_) = sorted((tmp_path / "corpus").rglob("*.wav"))
    run(wavflow, "synthesize", "--checkpoint", str(checkpoint), "--out", "audio", str(audio))
    assert [p.name for p in (tmp_path / "audio").glob("*.wav")] == [audio.name]
    assert list((tmp_path / "kernels").glob("wavflow_step_*.so"))  # built from the wheel's source

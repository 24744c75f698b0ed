"""The package works as a package: data files inside it, light imports, a wheel that runs."""

from __future__ import annotations

import os
import subprocess
import sys
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


@pytest.mark.slow
def test_a_wheel_installed_outside_the_checkout_runs_the_demo(tmp_path: Path) -> None:
    """Build a wheel, install it (without dependencies: they come from this environment) into a
    folder outside the checkout, and run `wavflow demo` from there on a tiny budget: its
    default recipe and the kernel's source must come from the installed package."""
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w", str(wheels)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("wavflow-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
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

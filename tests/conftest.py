"""Shared fixtures: a small built-in corpus and its prepared dataset, made once per session, and
a saved tiny teacher. The tiny models themselves are built by `factories`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from factories import perturbed, save_model

from wavflow.checkpoint import build_teacher
from wavflow.config import Recipe, load_recipe
from wavflow.corpus import write_corpus
from wavflow.data import prepare_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY_TEACHER = ROOT / "recipes" / "tiny_teacher.toml"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--gpu", action="store_true", help="also run tests that need a CUDA device")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu`-marked tests run only with --gpu on a machine with CUDA; elsewhere they are skipped,
    saying which of the two is missing."""
    if not config.getoption("--gpu"):
        reason = "a GPU test: run with --gpu on a CUDA machine (scripts/gpu_check.sh)"
    elif not torch.cuda.is_available():
        reason = "--gpu given, but torch sees no CUDA device"
    else:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    return load_recipe(TINY_TEACHER)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, minutes=0.6, sample_rate=16000, seed=3)
    return out


@pytest.fixture(scope="session")
def prepared_dir(
    tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path, tiny_recipe: Recipe
) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare_dataset(corpus_dir, out, tiny_recipe.features, tiny_recipe.data, progress=False)
    return out


@pytest.fixture
def teacher_checkpoint(tmp_path: Path, tiny_recipe: Recipe) -> str:
    """The tiny teacher recipe's model with small random weights everywhere, saved."""
    torch.manual_seed(0)
    return save_model(tmp_path, "teacher", tiny_recipe, perturbed(build_teacher(tiny_recipe), 0.02))

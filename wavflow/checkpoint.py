"""Building models from a recipe, and saving/loading checkpoints safely.

A checkpoint is a dict of tensors and plain data only, loaded with `torch.load(weights_only=True)`:

    version, kind ("teacher" | "student"), config (the resolved recipe as nested dicts),
    speakers (names, for speaker ids), model (state_dict), ema (state_dict or None),
    optimizer (state_dict), step, best_val, bad_steps,
    rng ({"torch": [CPU state of each rank], "cuda": [CUDA state of each rank]})

The config and the speakers determine the model's `ConditioningSpec` (`spec_and_sizes`),
so a loaded model has the spec it was trained with, and `load_teacher` compares it with the
student's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wavflow.audio import check_features_match
from wavflow.config import FeatureConfig, Recipe, RecipeError, recipe_from_dict, to_dict
from wavflow.nn.conditioning import ConditioningSpec
from wavflow.nn.conv import add_weight_norm, remove_weight_norm
from wavflow.teacher import WaveNet

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def build_teacher(recipe: Recipe, n_speakers: int = 0) -> WaveNet:
    """A new weight-normalised teacher from `[teacher]`, `[conditioning]` and the mel settings.

    Raises:
        RecipeError: the sizes do not make a model (the message names `[teacher]`).
    """
    with _sizes_of("teacher"):
        spec, sizes = spec_and_sizes(recipe, n_speakers, dataclasses.asdict(recipe.teacher))
        model = WaveNet(spec, features=recipe.features, **sizes)
    return add_weight_norm(model)


def build_student(recipe: Recipe, n_speakers: int = 0, kind: str | None = None) -> nn.Module:
    """A new student of `kind` (default `[student] kind`) from its `[student.<kind>]` sizes and
    `[conditioning]`.

    Raises:
        RecipeError: the sizes do not make a model (the message names `[student.<kind>]`).
    """
    from wavflow.flows import build_student as build_flow_student

    kind = kind or recipe.student.kind
    with _sizes_of(f"student.{kind}"):
        spec, sizes = spec_and_sizes(recipe, n_speakers, recipe.student.sizes(kind))
        return build_flow_student(kind, spec, features=recipe.features, **sizes)


@contextlib.contextmanager
def _sizes_of(section: str) -> Iterator[None]:
    """Turns a model constructor's refusal of its sizes (ValueError, or TypeError for a value
    of the wrong kind) into a RecipeError naming the recipe section they came from."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise RecipeError(f"[{section}] {error}") from error


# The `ConditioningSpec` settings a model's own section (`[teacher]`, `[student.<kind>]`) gives;
# the others come from `[features]`, `[conditioning]` and the data.
SECTION_SETTINGS = ("speaker_channels",)


def spec_and_sizes(
    recipe: Recipe, n_speakers: int, section: dict[str, Any]
) -> tuple[ConditioningSpec, dict[str, Any]]:
    """A model's `ConditioningSpec` from a recipe, and the model's other constructor arguments.

    The spec is the one a recipe gives every model, the teacher and each student alike: the mel
    settings of `[features]` (its sample rate in Hz), the harmonics of `[conditioning]` and
    `n_speakers`; only the embedding width (`SECTION_SETTINGS`) is the model's own. A
    checkpoint keeps the recipe and the speakers, so `load_model` rebuilds the same spec.

    Args:
        recipe: the resolved recipe.
        n_speakers: `speaker_count` of the data's speakers (0: no speaker embedding).
        section: the model's own section as keyword arguments (`[teacher]` or
            `[student.<kind>]`).

    Returns:
        (the spec, `section` without `SECTION_SETTINGS`: the model's architecture arguments).

    Raises:
        ValueError: a setting out of range, named by `ConditioningSpec`.
    """
    features = recipe.features
    spec = ConditioningSpec(
        n_mels=features.n_mels,
        hop_length=features.hop_length,
        sample_rate=features.sample_rate,
        n_speakers=n_speakers,
        n_harmonics=recipe.conditioning.harmonics,
        **{name: value for name, value in section.items() if name in SECTION_SETTINGS},
    )
    return spec, {name: value for name, value in section.items() if name not in SECTION_SETTINGS}


def build_model(kind: str, recipe: Recipe, n_speakers: int = 0) -> nn.Module:
    """`kind` "teacher" or "student": the model the checkpoint of that kind holds."""
    if kind == "teacher":
        return build_teacher(recipe, n_speakers)
    if kind == "student":
        return build_student(recipe, n_speakers)
    raise CheckpointError(f"unknown model kind '{kind}'")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` atomically: to a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    torch.save({"version": CHECKPOINT_VERSION, **state}, temporary)
    os.replace(temporary, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint without executing pickled code (`weights_only=True`).

    Args:
        path: the checkpoint file.
        map_location: where its tensors go (the CPU unless a training device is named).

    Raises:
        CheckpointError: missing file, corrupt file, or one holding anything but tensors and
            plain data (which may be an attempt to run code), naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data, so loading it "
            f"could run code. Only load checkpoints written by wavflow. ({error})"
        ) from error
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error})") from error
    missing = {"config", "kind", "model"} - set(state) if isinstance(state, dict) else {"all"}
    if missing:
        raise CheckpointError(f"{path}: not a wavflow checkpoint (missing {sorted(missing)})")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')} is not {CHECKPOINT_VERSION}"
        )
    return state


def checkpoint_state(
    kind: str, recipe: Recipe, model: nn.Module, speakers: list[str], **extra: Any
) -> dict[str, Any]:
    """The fields every checkpoint has; training adds optimizer, EMA, step, RNG."""
    return {
        "kind": kind,
        "config": to_dict(recipe),
        "speakers": list(speakers),
        "model": model.state_dict(),
        **extra,
    }


def load_model(
    path: str | Path, use_ema: bool = True, for_inference: bool = True
) -> tuple[nn.Module, Recipe, dict[str, Any]]:
    """Rebuild the model a checkpoint (or a .safetensors release) holds, strict keys, EMA
    weights where kept.

    Returns:
        (model in eval mode with weight norm folded when `for_inference`, its recipe, the raw
        checkpoint dict).
    """
    if Path(path).suffix == ".safetensors":  # a release pair: no pickle at all
        from wavflow.export import read_release

        state = read_release(Path(path))
    else:
        state = load_checkpoint(path)
    recipe = recipe_from_dict(state["config"])
    model = build_model(state["kind"], recipe, speaker_count(recipe, state.get("speakers", [])))
    weights = state["ema"] if use_ema and state.get("ema") else state["model"]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"{path}: weights do not fit the model its config describes ({error})"
        ) from error
    model.eval()
    if for_inference:
        remove_weight_norm(model)
    return model, recipe, state


def speaker_count(recipe: Recipe, speakers: list[str]) -> int:
    """Speakers a model conditions on: all of them when `conditioning.speakers` and there are
    2+."""
    return len(speakers) if recipe.conditioning.speakers and len(speakers) > 1 else 0


def load_teacher(
    path: str | Path,
    student: ConditioningSpec,
    features: FeatureConfig,
    speakers: list[str] | None = None,
) -> WaveNet:
    """A frozen teacher for distillation, checked against the student it teaches and its data.

    The teacher's `ConditioningSpec` (rebuilt from the checkpoint's recipe and speakers) must
    read the same input as the `student`'s: the same n_mels, hop_length and sample_rate
    (`INPUT_SETTINGS`); its other mel settings must equal `features`; and a teacher with
    speakers must have been trained on the data's `speakers` list (ids index both lists, so
    another list would select other voices' embeddings). Its speakers and harmonics may differ
    from the student's: each model conditions itself on the same batch (a teacher with pitch
    can teach a student without).

    Args:
        path: the teacher checkpoint.
        student: the spec of the student being distilled (`student.conditioner.spec`).
        features: the mel settings of the student's data.
        speakers: the student data's speaker names (None: not checked).

    Raises:
        CheckpointError: not a teacher checkpoint, conditioned on other input than the
            student, or trained on other speakers; AudioError: other mel settings differ.
    """
    model, recipe, state = load_model(path)
    if state["kind"] != "teacher":
        raise CheckpointError(f"{path}: holds a {state['kind']}, not a teacher")
    differences = model.conditioner.spec.input_differences(student)
    if differences:
        listed = "; ".join(
            f"{name} {own} for the teacher, {theirs} for the student"
            for name, own, theirs in differences
        )
        raise CheckpointError(
            f"{path}: the teacher reads other input than the student ({listed}). Distil from "
            "a teacher trained with the student's [features], or give the student the "
            "teacher's [features] and prepare its data with them."
        )
    check_features_match(features, recipe.features, f"teacher checkpoint {path}")
    own = list(state.get("speakers", []))
    if speakers is not None and model.capabilities.n_speakers and own != list(speakers):
        raise CheckpointError(
            f"{path}: the teacher was trained on speakers {own}, the data has {list(speakers)}: "
            "distil from a teacher trained on this data's speakers, in this order."
        )
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model

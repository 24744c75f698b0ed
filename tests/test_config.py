"""Recipes: strict keys and types, overrides, round trip through TOML, shipped recipes load."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from wavflow.config import (
    RecipeError,
    dumps_toml,
    load_recipe,
    recipe_from_dict,
    student_recipe,
    to_dict,
)

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.toml"))
TINY = Path(__file__).resolve().parents[1] / "recipes" / "tiny_teacher.toml"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    load_recipe(path)


def test_overrides_parse_toml_values_and_nested_tables():
    recipe = load_recipe(
        None,
        [
            "train.lr=3e-4",
            "teacher.output=mol",
            "student.iaf.flow_layers=[4, 4]",
            "distill.weights.kl=2",
        ],
    )
    assert recipe.train.lr == 3e-4
    assert recipe.teacher.output == "mol"
    assert recipe.student.iaf == {"flow_layers": [4, 4]}
    assert recipe.distill.weights["kl"] == 2.0 and "stft" in recipe.distill.weights


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "train.lrr"),
        ("train.lr=abc", "train.lr"),
        ("train.steps=1.5", "train.steps"),
        ("teacher.output=softmax", "output"),
        ("lr=1", "section.key"),
        ("train.lr", "section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, [override])


def test_unknown_section_and_bad_file(tmp_path):
    (tmp_path / "a.toml").write_text("[trian]\nlr = 1\n")
    with pytest.raises(RecipeError, match="trian"):
        load_recipe(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[train\n")
    with pytest.raises(RecipeError, match="b.toml"):
        load_recipe(tmp_path / "b.toml")
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "missing.toml")


def test_round_trip_through_toml():
    recipe = load_recipe(None, ["student.waveglow.n_flows=4", 'train.device="cpu"'])
    again = recipe_from_dict(tomllib.loads(dumps_toml(to_dict(recipe))))
    assert again == recipe


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_build_their_models(path):
    from wavflow.checkpoint import build_student, build_teacher

    recipe = load_recipe(path)
    build_teacher(recipe)
    if recipe.student.sizes():
        build_student(recipe)


def test_student_recipe_takes_the_student_budget() -> None:
    from wavflow.config import Recipe, TrainConfig, student_recipe

    recipe = Recipe(train=TrainConfig(steps=3000, student_steps=1200))
    student = student_recipe(recipe, "squeezewave")
    assert (student.train.steps, student.student.kind) == (1200, "squeezewave")
    assert student_recipe(Recipe(train=TrainConfig(steps=50))).train.steps == 50


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return path


def test_the_conditioning_section_maps(tmp_path):
    from wavflow.config import ConditioningConfig

    recipe = load_recipe(
        _write(tmp_path, '[conditioning]\nspeakers = true\npitch = "harmonic"\nn_harmonics = 4\n')
    )
    assert recipe.conditioning == ConditioningConfig(speakers=True, pitch="harmonic", n_harmonics=4)
    assert recipe.conditioning.harmonics == 4 and load_recipe(None).conditioning.harmonics == 0
    assert to_dict(recipe)["conditioning"] == {
        "speakers": True,
        "pitch": "harmonic",
        "n_harmonics": 4,
    }
    with pytest.raises(RecipeError, match="conditioning.pitch"):
        load_recipe(None, ["conditioning.pitch=3"])
    with pytest.raises(RecipeError, match=r"\[conditioning\] pitch must be"):
        load_recipe(None, ['conditioning.pitch="sine"'])


def test_pitch_without_f0_names_both_keys():
    with pytest.raises(RecipeError, match=r"conditioning\.pitch.*data\.f0_method"):
        load_recipe(None, ['conditioning.pitch="harmonic"', 'data.f0_method="none"'])


def test_shipped_recipes_use_the_current_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for path in RECIPES:
            load_recipe(path)


def test_a_recipe_with_conditioning_under_data_migrates_with_a_warning(tmp_path):
    old = _write(tmp_path, '[data]\nspeakers = true\npitch = "harmonic"\nn_harmonics = 3\n')
    with pytest.warns(FutureWarning) as caught:
        recipe = load_recipe(old)
    assert [str(w.message) for w in caught] == [
        f"recipe key 'data.{key}' has moved to [conditioning]"
        for key in ("speakers", "pitch", "n_harmonics")
    ]
    assert recipe == load_recipe(
        None,
        [
            "conditioning.speakers=true",
            'conditioning.pitch="harmonic"',
            "conditioning.n_harmonics=3",
        ],
    )
    with pytest.warns(FutureWarning, match="data.pitch"):  # an override in the old place too
        assert load_recipe(None, ['data.pitch="harmonic"']).conditioning.harmonics == 8


def test_a_conditioning_key_in_both_sections_is_an_error(tmp_path):
    both = _write(tmp_path, '[data]\npitch = "harmonic"\n\n[conditioning]\npitch = "none"\n')
    with pytest.raises(RecipeError, match=r"'data\.pitch' and 'conditioning\.pitch'"):
        load_recipe(both)
    with pytest.raises(RecipeError, match="data.speakers"):
        load_recipe(None, ["conditioning.speakers=true", "data.speakers=false"])


def test_an_old_checkpoint_config_migrates():
    recipe = load_recipe(None, ["conditioning.speakers=true", "conditioning.n_harmonics=5"])
    old = to_dict(recipe)
    old["data"] |= old.pop("conditioning")  # the layout checkpoints were written with
    old["teacher"]["n_speakers"] = 0
    with pytest.warns(FutureWarning) as caught:
        assert recipe_from_dict(old) == recipe
    assert "recipe key 'teacher.n_speakers' is ignored" in str(caught[-1].message)
    assert "conditioning" not in old and "n_speakers" in old["teacher"]  # the input is kept


def test_the_dead_teacher_n_speakers_is_dropped_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match="teacher.n_speakers"):
        recipe = load_recipe(_write(tmp_path, "[teacher]\nn_speakers = 4\n"))
    assert "n_speakers" not in to_dict(recipe)["teacher"]


def test_a_weights_table_replaces_the_default_weights(tmp_path):
    only_kl = _write(tmp_path, "[distill.weights]\nkl = 1.0\n")
    assert load_recipe(only_kl).distill.weights == {"kl": 1.0}
    assert load_recipe(only_kl, ["distill.weights.mel=0.5"]).distill.weights == {
        "kl": 1.0,
        "mel": 0.5,
    }
    # An override edits the weights the recipe resolves to: here the defaults.
    assert load_recipe(None, ["distill.weights.mel=0.5"]).distill.weights == {
        "kl": 1.0,
        "stft": 1.0,
        "mel": 0.5,
    }
    assert load_recipe(None, ["distill.weights={kl = 2.0}"]).distill.weights == {"kl": 2.0}


def test_a_loss_left_out_of_the_weights_is_not_computed(tmp_path):
    from wavflow.checkpoint import build_student, build_teacher
    from wavflow.distill import DistillLoss

    sizes = [
        "student.iaf.flow_layers=[2]",
        "student.iaf.layers_per_cycle=2",
        "student.iaf.channels=8",
    ]
    only_kl = _write(tmp_path, TINY.read_text() + "\n[distill.weights]\nkl = 1.0\n")
    torch.manual_seed(0)
    batch = {
        "audio": 0.1 * torch.randn(2, 1, 1024),
        "feats": torch.randn(2, 20, 16),
        "speaker": torch.zeros(2, dtype=torch.long),
        "f0": torch.zeros(2, 16),
    }
    computed = {}
    for name, recipe in [
        ("default", load_recipe(TINY, sizes)),
        ("kl", load_recipe(only_kl, sizes)),
    ]:
        loss = DistillLoss(build_student(recipe), build_teacher(recipe), recipe.distill)
        computed[name] = set(loss(batch))
    assert "stft" in computed["default"] and "stft" not in computed["kl"]
    assert "kl" in computed["kl"]


def test_distill_settings_of_one_student_kind_replace_the_sections(tmp_path) -> None:
    path = tmp_path / "recipe.toml"
    path.write_text(
        "[distill]\nteacher_log_scale_min = -9.0\n[distill.weights]\nkl = 1.0\nstft = 1.0\n"
        "[distill.students.squeezewave]\nteacher_log_scale_min = -7.0\n"
        "[distill.students.squeezewave.weights]\nkl = 0.01\nmel = 1.0\n"
    )
    recipe = load_recipe(path)
    squeezewave = student_recipe(recipe, "squeezewave").distill
    assert squeezewave.teacher_log_scale_min == -7.0
    assert squeezewave.weights == {"kl": 0.01, "mel": 1.0}  # the table replaces, no stft
    assert student_recipe(student_recipe(recipe, "squeezewave"), "squeezewave").distill == (
        squeezewave
    )  # applying it again (on resume) changes nothing
    iaf = student_recipe(recipe, "iaf").distill
    assert iaf.teacher_log_scale_min == -9.0 and iaf.weights == {"kl": 1.0, "stft": 1.0}


@pytest.mark.parametrize(
    "override, message",
    [
        ("distill.students.wavenet.kl_samples=2", "named by a student kind"),
        ("distill.students.iaf.kl_sample=2", "unknown recipe key 'distill.students.iaf.kl_sample'"),
        ("distill.students.iaf.kl_samples='two'", "'distill.students.iaf.kl_samples' must be int"),
    ],
)
def test_per_student_distill_settings_are_checked(override, message) -> None:
    with pytest.raises(RecipeError, match=message):
        student_recipe(load_recipe(None, [override]), "iaf")

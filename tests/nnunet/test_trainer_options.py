"""The trainer options file (vadice.nnunet.trainer_options): round trip, one-line errors, no torch at import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vadice.nnunet import trainer_options as to
from vadice.nnunet.trainer_options import TrainerOptions

EVERYTHING = TrainerOptions(epochs=3, iterations_per_epoch=7, val_iterations=2, seed=0, val_mirroring=False,
                            torch_threads=1, warm_start="/w/checkpoint_final.pth", catmil_warmup_epochs=0,
                            va={"preset": "selective-ln", "weighting": "equal-mass", "va_labels": [2], "gamma": 0.5,
                                "mode": "absolute", "v_ref": {"2": 120.0}, "v_min_mm3": 5, "r_min": None,
                                "r_max": 4})


def test_round_trip(tmp_path):
    path = to.write(tmp_path / "sub" / to.OPTIONS_FILE, EVERYTHING)
    assert to.read(path) == EVERYTHING
    # only what is given is written; nnU-Net's defaults read back as defaults
    assert json.loads(to.write(tmp_path / "d.json", TrainerOptions()).read_text()) == {}
    assert to.read(tmp_path / "d.json") == TrainerOptions() and TrainerOptions().given() == ()
    assert json.loads(to.write(tmp_path / "s.json", TrainerOptions(seed=0)).read_text()) == {"seed": 0}
    # null is the default too
    (tmp_path / "n.json").write_text(json.dumps({"epochs": None, "val_mirroring": None, "va": None}))
    assert to.read(tmp_path / "n.json") == TrainerOptions()
    # an empty va object is given (nnUNetTrainerVA then uses the dual preset, not vadice_va.json)
    assert to.read(to.write(tmp_path / "v.json", TrainerOptions(va={}))).given() == ("va",)


def test_every_field_is_read(tmp_path):
    """Each option written comes back with its own value (a reader that drops one fails here)."""
    path = to.write(tmp_path / "o.json", EVERYTHING)
    back = to.read(path)
    for name in to.BUDGET_OPTIONS + ("catmil_warmup_epochs", "va"):
        assert getattr(back, name) == getattr(EVERYTHING, name) != getattr(TrainerOptions(), name), name
    assert to.read(to.write(tmp_path / "seed.json", TrainerOptions(seed=7))).seed == 7


@pytest.mark.parametrize("raw, key, problem", [
    ({"epochs": 0}, "epochs", "must be an integer >= 1"),
    ({"epochs": 2.0}, "epochs", "must be an integer >= 1"),
    ({"epochs": True}, "epochs", "must be an integer >= 1"),
    ({"iterations_per_epoch": "250"}, "iterations_per_epoch", "must be an integer >= 1"),
    ({"val_iterations": -1}, "val_iterations", "must be an integer >= 1"),
    ({"seed": -1}, "seed", "must be an integer >= 0"),
    ({"val_mirroring": 0}, "val_mirroring", "must be true or false"),
    ({"val_mirroring": "false"}, "val_mirroring", "must be true or false"),
    ({"torch_threads": 0}, "torch_threads", "must be an integer >= 1"),
    ({"warm_start": ""}, "warm_start", "must be a file path"),
    ({"warm_start": 3}, "warm_start", "must be a file path"),
    ({"catmil_warmup_epochs": -2}, "catmil_warmup_epochs", "must be an integer >= 0"),
    ({"va": [1, 2]}, "va", "must be a JSON object"),
    ({"va": {"gama": 1}}, "va.gama", "unknown VA option"),
    ({"va": {"preset": "triple"}}, "va.preset", "must be one of"),
    ({"va": {"weighting": "flat"}}, "va.weighting", "must be one of"),
    ({"va": {"mode": "relative"}}, "va.mode", "must be one of"),
    ({"va": {"va_labels": [0, 2]}}, "va.va_labels", "must be a list of foreground labels"),
    ({"va": {"va_labels": 2}}, "va.va_labels", "must be a list"),
    ({"va": {"gamma": -1}}, "va.gamma", "must be a finite number >= 0"),
    ({"va": {"v_ref": 0}}, "va.v_ref", "must be a finite number > 0"),
    ({"va": {"v_ref": {"x": 3}}}, "va.v_ref", "labels must be integers >= 1"),
    ({"va": {"v_ref": {"2": -3}}}, "va.v_ref[2]", "must be a finite number > 0"),
    ({"va": {"v_min_mm3": "10"}}, "va.v_min_mm3", "must be a finite number > 0"),
    ({"va": {"r_max": 0}}, "va.r_max", "must be a finite number > 0"),
    ({"eppochs": 3}, "eppochs", "unknown trainer option"),
    ({"VADICE_EPOCHS": "3"}, "VADICE_EPOCHS", "unknown trainer option"),
])
def test_bad_input_is_one_line_naming_file_and_key(tmp_path, raw, key, problem):
    path = tmp_path / "opts.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError) as err:
        to.read(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: {problem}") and "\n" not in message


@pytest.mark.parametrize("text, problem", [("{", "cannot read trainer options"), ("[1]", "must be a JSON object")])
def test_unreadable_file_is_one_line(tmp_path, text, problem):
    path = tmp_path / "opts.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"^{path}: .*{problem}") as err:
        to.read(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'none.json'}: cannot read"):
        to.read(tmp_path / "none.json")


def test_options_are_checked_when_made_and_frozen():
    with pytest.raises(ValueError, match="^seed: must be an integer >= 0"):
        TrainerOptions(seed=-1)
    with pytest.raises(AttributeError):
        EVERYTHING.epochs = 4  # noqa


def test_va_options_file_beside_the_plans(tmp_path):
    path = tmp_path / "vadice_va.json"
    path.write_text(json.dumps({"preset": "dual", "r_max": None}))
    assert to.read_va(path) == {"preset": "dual", "r_max": None}
    path.write_text(json.dumps({"gama": 1}))
    with pytest.raises(ValueError, match=f"^{path}: gama: unknown VA option"):
        to.read_va(path)


def test_from_environment(tmp_path):
    assert to.from_environment({}) == (TrainerOptions(), None)
    assert to.from_environment({to.OPTIONS_ENV: " "}) == (TrainerOptions(), None)
    # the variables of older versions mean nothing now
    assert to.from_environment({"VADICE_EPOCHS": "3", "VADICE_SEED": "1"}) == (TrainerOptions(), None)
    path = to.write(tmp_path / "o.json", TrainerOptions(epochs=2))
    assert to.from_environment({to.OPTIONS_ENV: str(path)}) == (TrainerOptions(epochs=2), path)


def test_import_light():
    code = ("import sys; import vadice.nnunet.trainer_options, vadice.nnunet.paths, vadice.nnunet.train; "
            "print(sorted(m for m in ('torch', 'nnunetv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

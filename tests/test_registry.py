"""The registry: one list per concept, and the one fold parser."""

import pytest

from vadice import registry


def test_study_setups_are_known_and_baseline_first():
    assert registry.STUDY_SETUPS[0] == "baseline"
    assert set(registry.STUDY_SETUPS) <= set(registry.SETUPS)
    assert registry.setup("dual").trainer == "nnUNetTrainerVADual"
    assert not registry.setup("baseline").needs_lesion_ids


@pytest.mark.parametrize("text, expected", [("0", (0,)), ("0,2, 4", (0, 2, 4)), ("all", ("all",)),
                                            ([1, 3], (1, 3)), (2, (2,)), (["all"], ("all",))])
def test_parse_folds_reads(text, expected):
    assert registry.parse_folds(text) == expected


@pytest.mark.parametrize("text, message", [("", "empty"), ("0,0", "duplicates"), ("a", "integers"),
                                           ("-1", ">= 0"), ("all,1", "mixed")])
def test_parse_folds_refuses(text, message):
    with pytest.raises(ValueError, match=message):
        registry.parse_folds(text)


def test_unknown_names_list_the_known():
    with pytest.raises(ValueError, match="baseline"):
        registry.setup("nope")
    with pytest.raises(ValueError, match="cpu-small"):
        registry.preset("nope")
    with pytest.raises(ValueError, match="cuda"):
        registry.check_device("tpu")

"""lightning_rlhf.checks.check_range: the one range check of hyperparameters."""

import math

import pytest

from lightning_rlhf.checks import check_range


class Owner:
    pass


@pytest.mark.parametrize(
    "value, bounds, message",
    [
        (-1, {"ge": 0}, "Owner: x must be >= 0, got -1"),
        (0, {"gt": 0}, "Owner: x must be > 0, got 0"),
        (2, {"le": 1}, "Owner: x must be <= 1, got 2"),
        (1.0, {"gt": 0, "lt": 1}, "Owner: x must be in (0, 1), got 1.0"),
        (0.0, {"gt": 0, "le": 1}, "Owner: x must be in (0, 1], got 0.0"),
        (1, {"ge": 0, "lt": 1}, "Owner: x must be in [0, 1), got 1"),
        (math.nan, {"ge": 0}, "Owner: x must be >= 0, got nan"),
    ],
)
def test_out_of_range_is_one_line_naming_owner_parameter_range_and_value(value, bounds, message):
    with pytest.raises(ValueError) as err:
        check_range(Owner(), "x", value, **bounds)
    assert str(err.value) == message


def test_in_range_and_unset_values_pass():
    for value, bounds in [(0, {"ge": 0}), (1, {"gt": 0, "le": 1}), (0.5, {"gt": 0, "lt": 1})]:
        check_range(Owner(), "x", value, **bounds)
    check_range(Owner(), "x", None, gt=0)  # an optional parameter left unset
    with pytest.raises(ValueError, match="^GRPO: y must be >= 1, got 0$"):
        check_range("GRPO", "y", 0, ge=1)
    with pytest.raises(ValueError, match="give at least one bound"):
        check_range(Owner(), "x", -1)

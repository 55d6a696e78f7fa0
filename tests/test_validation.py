"""The shared argument checks: accepted values come back typed, everything else names the argument."""

import math

import numpy as np
import pytest

from sde_diffusers.validation import (
    check_bool,
    check_choice,
    check_int,
    check_number,
    check_open_interval,
    check_positive,
)


def test_check_int_accepts_integers_and_refuses_the_rest():
    assert check_int("n", 3) == 3
    assert type(check_int("n", np.int64(4))) is int
    assert check_int("n", 0, minimum=0) == 0
    with pytest.raises(TypeError, match="`n` must be an integer"):
        check_int("n", 2.0)
    with pytest.raises(TypeError, match="`n`"):
        check_int("n", True)
    with pytest.raises(ValueError, match=r"`n` must be an integer >= 1, got 0"):
        check_int("n", 0)
    with pytest.raises(ValueError, match=r"in \[1, 5\]"):
        check_int("n", 6, maximum=5)


def test_check_number_bounds_open_and_closed():
    assert check_number("x", 1) == 1.0
    assert check_number("x", 0.0, 0.0) == 0.0
    with pytest.raises(ValueError, match=r"`x` must lie in \(0.0, inf\)"):
        check_positive("x", 0.0)
    with pytest.raises(ValueError, match="finite"):
        check_number("x", math.nan)
    with pytest.raises(TypeError, match="`x` must be a number"):
        check_number("x", "1")
    with pytest.raises(TypeError):
        check_number("x", False)
    assert check_open_interval("eps", 1e-5, 0.0, 1.0) == 1e-5
    with pytest.raises(ValueError, match="`eps`"):
        check_open_interval("eps", 1.0, 0.0, 1.0)


def test_check_choice_and_bool():
    assert check_choice("kind", "a", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"`kind` must be one of \('a', 'b'\), got 'c'"):
        check_choice("kind", "c", ("a", "b"))
    with pytest.raises(ValueError, match="`kind`"):
        check_choice("kind", ["unhashable"], {"a": 1})
    assert check_bool("flag", False) is False
    with pytest.raises(TypeError, match="`flag` must be True or False"):
        check_bool("flag", 1)

"""The package's one set of argument validators (mrfengine._validate)."""

import numpy as np
import pytest

from mrfengine._validate import NAME_RE, check_float, check_int, check_name, check_range, is_sha256
from mrfengine.errors import ValidationError


def test_check_int_accepts_python_and_numpy_integers_in_bounds():
    assert check_int(3, "n") == 3
    assert type(check_int(np.int64(3), "n")) is int
    assert check_int(0, "n", minimum=0) == 0
    assert check_int(-5, "n", minimum=None) == -5
    assert check_int(10, "n", minimum=1, maximum=10) == 10


@pytest.mark.parametrize(("value", "kw", "message"), [
    (0, {}, "n must be an integer >= 1; got 0"),
    (True, {}, "n must be an integer >= 1; got True"),
    (2.0, {}, "n must be an integer >= 1; got 2.0"),
    ("3", {}, "n must be an integer >= 1; got '3'"),
    (11, {"maximum": 10}, "n must be an integer from 1 to 10; got 11"),
    (11, {"minimum": None, "maximum": 10}, "n must be an integer <= 10; got 11"),
])
def test_check_int_names_the_argument_and_the_value(value, kw, message):
    with pytest.raises(ValidationError) as info:
        check_int(value, "n", **kw)
    assert str(info.value) == message


def test_check_float_bounds_and_non_finite_values():
    assert check_float(np.float32(0.5), "x", minimum=0.0, maximum=1.0) == 0.5
    with pytest.raises(ValidationError, match=r"x must be a finite number > 0; got 0.0"):
        check_float(0.0, "x", minimum=0.0, exclusive_minimum=True)
    for bad in (float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValidationError, match="x must be a finite number"):
            check_float(bad, "x")


def test_check_range_is_an_increasing_pair_above_its_floor():
    assert check_range((0.5, 2), "r", minimum=0.1) == (0.5, 2.0)
    with pytest.raises(ValidationError, match=r"r must be an increasing range \(0.1 <= low <= high\); got \(3, 1\)"):
        check_range((3, 1), "r", minimum=0.1)
    with pytest.raises(ValidationError, match="r must be a \\(low, high\\) pair"):
        check_range(3, "r")
    with pytest.raises(ValidationError, match="increasing range"):
        check_range((float("nan"), 1), "r")


def test_names_follow_one_rule():
    for good in ("unet", "mppca-match_v2", "a.b", "0"):
        assert check_name(good, "pipeline name") == good
    for bad in ("", ".hidden", "a/b", "a\\b", "a b", "name\n", "../x", 3):
        with pytest.raises(ValidationError, match="pipeline name must be letters, digits"):
            check_name(bad, "pipeline name")
        assert not (isinstance(bad, str) and NAME_RE.match(bad))


def test_sha256_digests_are_lower_case_hex_of_64_digits():
    assert is_sha256("a" * 64)
    assert not is_sha256("A" * 64)
    assert not is_sha256("a" * 63)
    assert not is_sha256("a" * 64 + "\n")
    assert not is_sha256(None)

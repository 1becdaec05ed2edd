"""The one percentile window every series uses, and its edge cases."""

import numpy as np
import pytest

from gadgets.windowing import percentile_window


def edges(window: tuple[float, float]) -> tuple[float, float]:
    center, width = window
    return center - width / 2, center + width / 2


def test_window_spans_the_1st_to_99th_percentile_of_the_finite_values() -> None:
    values = np.concatenate([np.arange(1.0, 10002.0), [np.nan, np.inf, -np.inf]])  # 1..10001
    low, high = edges(percentile_window(values))
    assert low == pytest.approx(101.0)
    assert high == pytest.approx(9901.0)


def test_window_is_clipped_into_the_plausible_range() -> None:
    values = np.linspace(-500.0, 8000.0, 1001)
    low, high = edges(percentile_window(values, minimum=0.0, maximum=5000.0))
    assert (low, high) == (0.0, 5000.0)
    low, high = edges(percentile_window(values, maximum=5000.0))
    assert low == pytest.approx(-415.0)
    assert high == 5000.0


@pytest.mark.parametrize(
    ("values", "minimum", "maximum", "expected"),
    [
        ([], None, None, (0.0, 1.0)),  # empty selection
        ([np.nan, np.inf, -np.inf], None, None, (0.0, 1.0)),  # nothing finite
        ([np.nan], 0.0, 5000.0, (0.0, 5000.0)),
        ([], 2.0, None, (2.0, 3.0)),
        ([], None, -1.0, (-2.0, -1.0)),
        ([1000.0] * 5, None, None, (500.0, 1500.0)),
        ([1000.0] * 5, 0.0, 5000.0, (500.0, 1500.0)),
        ([0.0] * 5, None, None, (-0.5, 0.5)),
        ([0.0] * 5, 0.0, 5000.0, (0.0, 0.5)),
        ([-4.0] * 5, None, None, (-6.0, -2.0)),
        ([5000.0] * 5, 0.0, 5000.0, (2500.0, 5000.0)),
        ([9000.0, 9100.0], 0.0, 5000.0, (0.0, 5000.0)),  # all above the range: clipping leaves nothing
        ([-9.0, -3.0], 0.0, None, (0.0, 1.0)),  # all below the minimum
        ([np.nan, 1000.0, np.inf, 1000.0], None, None, (500.0, 1500.0)),  # NaN and inf left out of equal values
    ],
)
def test_window_edge_cases(
    values: list[float], minimum: float | None, maximum: float | None, expected: tuple[float, float]
) -> None:
    window = percentile_window(np.asarray(values), minimum=minimum, maximum=maximum)
    assert window[1] > 0
    assert edges(window) == pytest.approx(expected)


def test_window_bounds_must_be_ordered() -> None:
    with pytest.raises(ValueError, match=r"window minimum 5\.0 must be below its maximum 5\.0"):
        percentile_window(np.ones(3), minimum=5.0, maximum=5.0)


@pytest.mark.parametrize(("minimum", "maximum"), [(np.nan, None), (None, np.inf), (0.0, np.nan)])
def test_window_bounds_must_be_finite(minimum: float | None, maximum: float | None) -> None:
    with pytest.raises(ValueError, match=r"window (minimum|maximum) must be finite or None; got (nan|inf)"):
        percentile_window(np.ones(3), minimum=minimum, maximum=maximum)

"""BiT-HyperRule schedule and resolution presets of Zhao et al."""
import pytest

from covidct.errors import CovidctError
from covidct.bit.schedule import (RESOLUTIONS, SCHEDULES, learning_rate, parse_resolution,
                                     parse_schedule)


def test_presets_are_the_papers():
    assert SCHEDULES == {
        "bit-500": (100, 200, 300, 400, 500),
        "bit-5000": (500, 1500, 3000, 4500, 5000),
        "bit-10000": (500, 3000, 6000, 9000, 10000),
        "bit-20000": (500, 6000, 12000, 18000, 20000),
    }
    assert set(RESOLUTIONS.values()) == {(160, 128), (256, 224), (448, 384), (512, 480)}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_schedule_values_at_the_boundaries(name):
    warmup, d1, d2, d3, total = SCHEDULES[name]
    lr = 0.003
    assert learning_rate(0, SCHEDULES[name], lr) == 0.0
    assert learning_rate(warmup // 2, SCHEDULES[name], lr) == pytest.approx(lr * (warmup // 2) / warmup)
    assert learning_rate(warmup - 1, SCHEDULES[name], lr) < lr
    assert learning_rate(warmup, SCHEDULES[name], lr) == pytest.approx(lr)
    # As the BiT reference code: the decay applies to the updates after each boundary.
    for k, boundary in enumerate((d1, d2, d3)):
        assert learning_rate(boundary, SCHEDULES[name], lr) == pytest.approx(lr / 10 ** k)
        assert learning_rate(boundary + 1, SCHEDULES[name], lr) == pytest.approx(lr / 10 ** (k + 1))
    assert learning_rate(total - 1, SCHEDULES[name], lr) == pytest.approx(lr / 1000)
    assert learning_rate(total, SCHEDULES[name], lr) is None


def test_warmup_is_linear_and_monotone():
    values = [learning_rate(s, (100, 200, 300, 400, 500)) for s in range(101)]
    assert all(b > a for a, b in zip(values, values[1:]))
    assert values[50] == pytest.approx(0.0015)


def test_parse_schedule_and_resolution():
    assert parse_schedule("bit-500") == (100, 200, 300, 400, 500)
    assert parse_schedule("5,10,15,20,25") == (5, 10, 15, 20, 25)
    assert parse_schedule("2,10") == (2, 10)
    for bad in ("10,5", "abc", "7"):
        with pytest.raises(CovidctError):
            parse_schedule(bad)
    assert parse_resolution("480") == (512, 480)
    assert parse_resolution("160,128") == (160, 128)
    assert parse_resolution("64") == (64, 64)
    for bad in ("100,128", "x", "8"):
        with pytest.raises(CovidctError):
            parse_resolution(bad)

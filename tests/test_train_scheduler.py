"""Learning-rate schedules against hand-written formulas (big_vision's rsqrt, open_clip-style
warm-up and cosine), as pure functions of the step."""
import math

import pytest

from clippo.train.scheduler import Schedule, lr_at, resolve_steps


def test_cosine_warmup_and_floor_by_hand():
    base, total, warm = 1e-3, 110, 10
    s = Schedule(base_lr=base, total_steps=total, kind="cosine", warmup=warm)
    # warm-up: base * (step + 1) / warmup
    assert s(0) == pytest.approx(1e-4)
    assert s(4) == pytest.approx(5e-4)
    assert s(9) == pytest.approx(base)
    # cosine from the end of the warm-up: progress (step - 10) / 100
    assert s(10) == pytest.approx(base)
    assert s(60) == pytest.approx(base * 0.5)
    assert s(35) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s(109) == pytest.approx(base * 0.5 * (1 + math.cos(math.pi * 0.99)))
    floor = Schedule(base_lr=base, total_steps=total, warmup=warm, lr_end=1e-5)
    assert floor(60) == pytest.approx(1e-5 + (base - 1e-5) * 0.5)
    assert floor(10_000) == pytest.approx(1e-5)


def test_rsqrt_is_big_vision_formula():
    # big_vision: lr / sqrt((step + timescale - warmup) / timescale) after the warm-up,
    # times min(1, (total - step) / cooldown)
    base, total, warm, ts, cool = 1e-3, 1000, 100, 50, 200
    s = Schedule(base_lr=base, total_steps=total, kind="rsqrt", warmup=warm, cooldown=cool,
                 timescale=ts)
    for step in (150, 400, 799):
        assert s(step) == pytest.approx(base / math.sqrt((step + ts - warm) / ts))
    assert s(100) == pytest.approx(base)  # continuous at the end of the warm-up
    for step in (800, 900, 999):
        want = base / math.sqrt((step + ts - warm) / ts) * (total - step) / cool
        assert s(step) == pytest.approx(want)
    # default timescale: the warm-up
    assert lr_at(400, base_lr=1.0, total_steps=1000, kind="rsqrt", warmup_steps=100) == \
        pytest.approx(1 / math.sqrt(4))


def test_const_with_fraction_warmup_and_cooldown():
    s = Schedule(base_lr=2.0, total_steps=100, kind="const", warmup=0.1, cooldown=0.2)
    assert (s.warmup_steps, s.cooldown_steps) == (10, 20)
    assert s(0) == pytest.approx(0.2)
    assert s(50) == 2.0
    assert s(90) == pytest.approx(2.0 * 10 / 20)
    assert s(99) == pytest.approx(2.0 / 20)


def test_resolve_and_errors():
    assert resolve_steps(0.25, 40) == 10
    assert resolve_steps(7, 40) == 7
    assert resolve_steps(0, 40) == 0
    with pytest.warns(UserWarning, match="do not fit in 10 steps: using 8 and 2"):
        s = Schedule(base_lr=1.0, total_steps=10, warmup=8, cooldown=5)
    assert (s.warmup_steps, s.cooldown_steps) == (8, 2)
    with pytest.warns(UserWarning, match="using 10 and 0"):
        assert Schedule(base_lr=1.0, total_steps=10, warmup=50).warmup_steps == 10
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        lr_at(0, base_lr=1.0, total_steps=10, kind="step")
    with pytest.raises(ValueError, match="lr-end"):
        Schedule(base_lr=1.0, total_steps=10, lr_end=2.0)

"""Learning-rate schedules: values at chosen steps, as a user reading the LR plot would check."""
import math

import pytest

from core.config import OptimizerConfig, ScheduleConfig
from training.optim import build_schedule, scaled_lr

STEPS_PER_EPOCH = 10
EPOCHS = 8


def lr_at(name, step, **kwargs):
    cfg = ScheduleConfig(name=name, **kwargs)
    return float(build_schedule(cfg, 0.1, STEPS_PER_EPOCH, EPOCHS)(step))


def test_warmup_rises_linearly_to_the_peak():
    assert lr_at("cosine", 0, warmup_epochs=1) == pytest.approx(0.01)
    assert lr_at("cosine", 4, warmup_epochs=1) == pytest.approx(0.05)
    assert lr_at("cosine", 9, warmup_epochs=1) == pytest.approx(0.1)


def test_cosine_reaches_half_at_mid_decay_and_floor_at_the_end():
    # 70 decay steps after a 10-step warmup: halfway is step 45.
    assert lr_at("cosine", 45, warmup_epochs=1) == pytest.approx(0.05, rel=1e-5)
    assert lr_at("cosine", 80, warmup_epochs=1, min_lr_fraction=0.1) == pytest.approx(0.01, rel=1e-5)


def test_step_decay_multiplies_at_each_boundary():
    kwargs = dict(step_epochs=[3.0, 5.0], step_factor=0.1)
    assert lr_at("step", 29, **kwargs) == pytest.approx(0.1)
    assert lr_at("step", 30, **kwargs) == pytest.approx(0.01)
    assert lr_at("step", 50, **kwargs) == pytest.approx(0.001)


def test_smooth_decay_halves_every_decay_period():
    kwargs = dict(decay_rate=0.5, decay_epochs=2.0)
    assert lr_at("smooth_decay", 0, **kwargs) == pytest.approx(0.1)
    assert lr_at("smooth_decay", 20, **kwargs) == pytest.approx(0.05, rel=1e-5)
    assert lr_at("smooth_decay", 10, **kwargs) == pytest.approx(0.1 / math.sqrt(2), rel=1e-5)


def test_cyclic_decay_restarts_with_a_lower_top():
    kwargs = dict(decay_rate=0.5, cycle_epochs=2.0)
    assert lr_at("cyclic_decay", 0, **kwargs) == pytest.approx(0.1)
    assert lr_at("cyclic_decay", 10, **kwargs) == pytest.approx(0.05, rel=1e-5)  # mid first cycle
    assert lr_at("cyclic_decay", 19, **kwargs) < 0.002  # end of the first cycle
    assert lr_at("cyclic_decay", 20, **kwargs) == pytest.approx(0.05, rel=1e-5)  # restart at half top


def test_constant_stays_at_the_peak_after_warmup():
    assert lr_at("constant", 3, warmup_epochs=1) < 0.1
    assert lr_at("constant", 79, warmup_epochs=1) == pytest.approx(0.1)


def test_linear_scaling_follows_the_global_batch():
    opt = OptimizerConfig(lr=0.1, base_batch_size=256, scale_lr=True)
    assert scaled_lr(opt, 1024) == pytest.approx(0.4)
    assert scaled_lr(OptimizerConfig(lr=0.1, scale_lr=False), 1024) == pytest.approx(0.1)

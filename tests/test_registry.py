"""One registry of names: the launcher refuses what the trainer cannot build, and the trainer
builds exactly what the launcher accepts."""
from __future__ import annotations

import subprocess
import sys

import pytest

from core import registry
from core.config import ConfigError, load_config


@pytest.mark.parametrize("override, names", [
    ("model.name=resnet9000", "vgg16, vgg19"),
    ("optimizer.name=lamb", "sgd, adam, adamw"),
    ("schedule.name=foo", "constant, cyclic_decay"),
    ("runtime.backend=tpu", "mirrored, multiworker, horovod"),
])
def test_unknown_names_fail_at_launch_with_the_valid_names(tmp_path, override, names):
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--dry-run", "--run-root", str(tmp_path),
                           override], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and override.split("=")[1] in lines[0]


def test_text_models_are_refused_for_images_and_the_reverse():
    with pytest.raises(ConfigError, match="'lstm' is not a image model.*small_cnn"):
        load_config(None, ["model.name=lstm"])
    with pytest.raises(ConfigError, match="'vgg19' is not a text model; valid names: lstm, gru"):
        load_config(None, ["task=text", "model.name=vgg19"])
    assert load_config(None, ["task=text"]).model.name == "lstm"  # the task's default model


def test_keys_of_the_other_task_are_refused():
    with pytest.raises(ConfigError, match="augment.flip is a key of task image, but the task is text"):
        load_config(None, ["task=text", "augment.flip=false"])
    with pytest.raises(ConfigError, match="text.hidden_dim is a key of task text"):
        load_config(None, ["text.hidden_dim=8"])
    with pytest.raises(ConfigError, match="task.*'audio' is not one of image, text"):
        load_config(None, ["task=audio"])


def test_training_builders_cover_exactly_the_registry():
    from training.backends import BACKEND_BUILDERS
    from training.models import IMAGE_BUILDERS
    from training.optim import OPTIMIZER_BUILDERS, SCHEDULE_SHAPES
    from training.tasks import TASK_BUILDERS
    from training.text_models import TEXT_BUILDERS

    assert set(TASK_BUILDERS) == set(registry.TASKS)
    assert set(IMAGE_BUILDERS) == set(registry.TASKS["image"].models)
    assert set(TEXT_BUILDERS) == set(registry.TASKS["text"].models)
    assert set(OPTIMIZER_BUILDERS) == set(registry.OPTIMIZERS)
    assert set(SCHEDULE_SHAPES) == set(registry.SCHEDULES)
    assert set(BACKEND_BUILDERS) == set(registry.BACKENDS)

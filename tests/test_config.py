"""The layered config: defaults -> YAML -> dotted overrides -> flags, strict about names and types."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from core.config import ConfigError, dump, from_dict, load_config

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_file_values_replace_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "optimizer:\n  lr: 0.02\nslurm:\n  nodes: 4\n"
                                      "runtime:\n  backend: multiworker\n"))
    assert (cfg.optimizer.lr, cfg.slurm.nodes, cfg.runtime.backend) == (0.02, 4, "multiworker")
    assert cfg.train.epochs == 90  # untouched keys keep their defaults


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = write(tmp_path, "optimizer:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "optimizer.learning_rate" in message and str(path) in message
    assert "lr" in message and "momentum" in message  # the valid keys of the section
    assert "\n" not in message


def test_unknown_section_lists_sections(tmp_path):
    with pytest.raises(ConfigError, match="unknown section 'optimiser'.*valid sections: data"):
        load_config(write(tmp_path, "optimiser:\n  lr: 0.1\n"))


@pytest.mark.parametrize("text, key", [
    ("slurm:\n  nodes: two\n", "slurm.nodes"),
    ("optimizer:\n  lr: [0.1]\n", "optimizer.lr"),
    ("train:\n  jit_compile: 1\n", "train.jit_compile"),
    ("slurm:\n  nodes: true\n", "slurm.nodes"),  # a bool is not an int here
    ("model:\n  head_units: 64\n", "model.head_units"),
])
def test_wrong_type_names_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, text))


def test_int_is_accepted_where_float_is_expected(tmp_path):
    assert load_config(write(tmp_path, "optimizer:\n  lr: 1\n")).optimizer.lr == 1.0


def test_overrides_beat_the_file(tmp_path):
    path = write(tmp_path, "optimizer:\n  lr: 0.02\ntrain:\n  epochs: 5\n")
    cfg = load_config(path, ["optimizer.lr=0.5", "model.head_units=[8, 4]"])
    assert (cfg.optimizer.lr, cfg.train.epochs, cfg.model.head_units) == (0.5, 5, [8, 4])


def test_flags_beat_overrides_and_none_flags_are_ignored(tmp_path):
    path = write(tmp_path, "slurm:\n  nodes: 2\n  gpus_per_node: 4\nruntime:\n  backend: horovod\n")
    cfg = load_config(path, ["slurm.nodes=3"], {"slurm.nodes": 4, "slurm.gpus_per_node": None})
    assert (cfg.slurm.nodes, cfg.slurm.gpus_per_node) == (4, 4)


def test_flag_errors_name_the_flag():
    with pytest.raises(ConfigError, match="flag --nodes: 0 is below the minimum 1"):
        load_config(None, [], {"slurm.nodes": 0})


def test_choices_are_listed():
    with pytest.raises(ConfigError, match="'tpu' is not one of mirrored, multiworker, horovod"):
        load_config(None, ["runtime.backend=tpu"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["lr=0.1"])


def test_control_characters_are_refused_from_every_layer(tmp_path):
    # A newline in a value would start a new #SBATCH directive or shell command.
    with pytest.raises(ConfigError, match="slurm.partition in .*control character '\\\\r'"):
        load_config(write(tmp_path, 'slurm:\n  partition: "gpu\\r"\n'))
    with pytest.raises(ConfigError, match="slurm.setup in override.*control character"):
        load_config(None, ['slurm.setup=["module load x\\nrm -rf ~"]'])
    with pytest.raises(ConfigError, match="slurm.job_name in flag --job-name.*control character"):
        load_config(None, [], {"slurm.job_name": "a\nb"})


def test_cross_field_rule_mirrored_is_single_node():
    with pytest.raises(ConfigError, match="multiworker or horovod"):
        load_config(None, [], {"slurm.nodes": 2, "runtime.backend": "mirrored"})


def test_several_nodes_without_a_backend_pick_multiworker_and_say_so_in_one_line(capsys):
    cfg = load_config(None, ["slurm.gpus_per_node=4"], {"slurm.nodes": 2})
    assert cfg.runtime.backend == "multiworker"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("launch: note: runtime.backend multiworker"), err
    assert "slurm.nodes is 2" in err


def test_one_node_without_a_backend_keeps_mirrored_quietly(capsys):
    assert load_config(None, [], {"slurm.nodes": 1}).runtime.backend == "mirrored"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("where", ["yaml", "override", "flag"])
def test_an_explicit_mirrored_on_two_nodes_stays_an_error_that_names_the_fix(tmp_path, capsys, where):
    path = write(tmp_path, "runtime:\n  backend: mirrored\n") if where == "yaml" else None
    overrides = ["runtime.backend=mirrored"] if where == "override" else []
    flags = {"slurm.nodes": 2, "runtime.backend": "mirrored" if where == "flag" else None}
    with pytest.raises(ConfigError, match="use --backend multiworker or horovod.*leave runtime.backend unset"):
        load_config(path, overrides, flags)
    assert capsys.readouterr().err == ""  # no note about a backend that was not chosen


def test_an_explicit_backend_on_two_nodes_is_kept(capsys):
    assert load_config(None, ["runtime.backend=horovod"], {"slurm.nodes": 2}).runtime.backend == "horovod"
    assert capsys.readouterr().err == ""


def test_the_picked_backend_is_written_to_the_run_config_so_a_resume_keeps_it(tmp_path, capsys):
    cfg = load_config(None, [], {"slurm.nodes": 2})
    saved = tmp_path / "config.yaml"
    saved.write_text(dump(cfg))
    assert load_config(saved).runtime.backend == "multiworker"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_starts_with_its_command(path):
    load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# launch --config configs/" + path.name), first


def test_the_three_shipped_configs_exist():
    assert {p.name for p in SHIPPED} >= {"demo.yaml", "vgg19.yaml", "resnet50_imagenet.yaml"}


def test_missing_file_says_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "slurm:\n  nodes: 2\n  gpus_per_node: [4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "line" in str(err.value) and "YAML" in str(err.value)


def test_dump_round_trips():
    cfg = load_config(REPO / "configs" / "resnet50_imagenet.yaml", ["slurm.setup=['module load cuda']"])
    assert from_dict(yaml.safe_load(dump(cfg))) == cfg


def test_xla_with_horovod_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="train.jit_compile"):
        load_config(None, ["runtime.backend=horovod", "train.jit_compile=true"])


# Ranges are declared on the fields (core.config.Range); every layer is checked against them.
@pytest.mark.parametrize("override, says", [
    ("optimizer.lr=0", "optimizer.lr in override 'optimizer.lr=0': 0.0 must be above 0"),
    ("optimizer.lr=-1", "-1.0 must be above 0"),
    ("model.dropout=1.5", "model.dropout in override 'model.dropout=1.5': 1.5 must be below 1"),
    ("model.dropout=1", "1.0 must be below 1"),
    ("data.min_crop_area=0", "data.min_crop_area in override 'data.min_crop_area=0': 0.0 must be above 0"),
    ("data.val_crop_fraction=1.2", "1.2 is above the maximum 1"),
    ("train.log_every_steps=0", "0 is below the minimum 1"),
    ("model.head_units=[64, 0]", "model.head_units in override 'model.head_units=[64, 0]': 0 is below the minimum 1"),
    ("model.std=[1, 0, 1]", "model.std in override 'model.std=[1, 0, 1]': 0.0 must be above 0"),
    ("runtime.port=70000", "70000 is above the maximum 65535"),
    ("runtime.port=-1", "runtime.port in override 'runtime.port=-1': -1 is below the minimum 0"),
])
def test_out_of_range_values_name_the_key_and_the_bound(override, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert says in str(err.value)


def test_ranges_apply_to_the_file_too(tmp_path):
    with pytest.raises(ConfigError, match=r"model.dropout in .*run.yaml: 1.5 must be below 1"):
        load_config(write(tmp_path, "model:\n  dropout: 1.5\n"))


def test_values_at_the_edge_of_a_range_are_accepted():
    cfg = load_config(None, ["model.dropout=0", "data.min_crop_area=1", "model.trainable_layers=-1",
                             "schedule.min_lr_fraction=1"])
    assert (cfg.model.dropout, cfg.data.min_crop_area, cfg.schedule.min_lr_fraction) == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("override, value", [
    ("slurm.account=proj #7", "proj #7"),  # YAML would cut this at the comment
    ("slurm.account=007", "007"),  # a text field keeps digits as typed
    ("slurm.qos=off", "off"),  # YAML 1.1 reads off as false
    ("slurm.mem=64G", "64G"),
    ("slurm.account= spaced ", " spaced "),
    ("model.weights=null", None),
    ("optimizer.lr=1e-3", 0.001),  # YAML 1.1 leaves this a string
    ("train.epochs=+3", 3),
    ("train.jit_compile=True", True),
    ("model.head_units=[8, 4]", [8, 4]),
    ("slurm.setup=['module load a #b', c]", ["module load a #b", "c"]),
])
def test_override_values_keep_the_text_unless_it_is_a_number_bool_null_or_list(override, value):
    section, key = override.split("=", 1)[0].split(".")
    assert getattr(getattr(load_config(None, [override]), section), key) == value


@pytest.mark.parametrize("override, says", [
    ("model.head_units=[8, 4] # four", "YAML would drop '# four'"),
    ("model.head_units=[8, 4", "not a valid list or mapping"),
    ("optimizer.lr=0.1 # peak", "expected float, got '0.1 # peak'"),
    ("slurm.account=proj\n7", "control character '\\n'"),
    ("slurm.setup=[a, b]\n[c]", "not a valid list or mapping"),
])
def test_an_override_that_yaml_would_change_is_an_error_not_a_silent_change(override, says):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert says in str(err.value)


@pytest.mark.parametrize("overrides, replicas", [
    (["runtime.backend=mirrored", "slurm.gpus_per_node=4"], 4),  # one process, every GPU of the node
    (["runtime.backend=mirrored"], 1),
    (["runtime.backend=mirrored", "runtime.cpu_devices=2"], 2),  # logical CPU devices, as in the tests
    (["runtime.backend=multiworker", "slurm.nodes=2", "slurm.gpus_per_node=4"], 8),
    (["runtime.backend=multiworker", "slurm.nodes=2", "runtime.cpu_devices=2"], 2),  # split in mirrored only
    (["runtime.backend=horovod", "slurm.nodes=2", "slurm.gpus_per_node=4"], 8),  # a process per GPU
    (["runtime.backend=horovod", "slurm.nodes=3"], 3),
])
def test_replicas_are_counted_as_the_backends_count_them(overrides, replicas):
    """training/backends: num_replicas_in_sync of the strategy, or hvd.size(); the login node
    counts them without TensorFlow to refuse a global batch they cannot share."""
    from core.config import replica_count

    cfg = load_config(None, [*overrides, f"data.batch_size={replicas * 16}"])
    assert replica_count(cfg)[0] == replicas
    if replicas > 1:
        with pytest.raises(ConfigError, match=f"does not divide over {replicas} replicas"):
            load_config(None, [*overrides, f"data.batch_size={replicas * 16 + 1}"])

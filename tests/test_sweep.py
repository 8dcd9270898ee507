"""Sweeps without a cluster job: points, validation before anything exists, the array script."""
from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from core.config import ConfigError
from launcher.render import JobArray, render_sbatch
from launcher.sweep import Point, make_points, parse_axes
from test_render import PYTHON, RUN_DIR, check_golden, golden_slurm, sbatch_lines

DEMO = "configs/demo.yaml"


def test_grid_is_the_product_with_the_last_key_fastest_and_values_typed_like_overrides():
    axes = parse_axes(["optimizer.lr=0.01,0.1", "model.head_units=[64,32],[128]", "slurm.account=007,8"])
    points = make_points({}, axes, "cli")
    assert [p.values for p in points[:2]] == [
        {"optimizer.lr": 0.01, "model.head_units": [64, 32], "slurm.account": "007"},  # a text field keeps its text
        {"optimizer.lr": 0.01, "model.head_units": [64, 32], "slurm.account": "8"}]
    assert len(points) == 8 and points[-1].dir_name() == "007-lr0.1-head_units_128_-account8"


def test_file_points_cannot_be_mixed_with_a_grid():
    with pytest.raises(ConfigError, match="cannot be combined"):
        make_points({"points": [{"optimizer.lr": 0.1}]}, {"model.dropout": [0.1]}, "x.yaml")


def test_dry_run_prints_the_array_script_and_the_point_table_and_creates_nothing(launch_cli, run_root):
    done = launch_cli("--config", DEMO, "--run-root", run_root, "--sweep", "optimizer.lr=0.003,0.01",
                      "--sweep", "model.dropout=0.1,0.2", "--max-parallel", "2", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-3%2" in done.stdout
    assert re.search(r"#SBATCH --output=\S+/demo-sweep-\d{8}-\d{6}/logs/slurm-%A_%a.out", done.stdout)
    assert re.search(r"^3\s+0.01\s+0.2\s+003-lr0.01-dropout0.2$", done.stderr, re.M), done.stderr
    assert not run_root.exists()
    assert subprocess.run(["bash", "-n"], input=done.stdout, text=True).returncode == 0


@pytest.mark.parametrize("args, named", [
    (["--sweep", "optimizer.lr=0.01,-1"], "sweep point 1 (optimizer.lr=-1): optimizer.lr"),
    (["--sweep", "model.dropout=0.1,0.2", "--sweep", "data.image_size=32,4"],
     "sweep point 1 (model.dropout=0.1 data.image_size=4): data.image_size"),
    (["--sweep", "slurm.nodes=1,2"], "slurm.nodes cannot be swept"),
    (["--sweep", "optimizer.lr"], "--sweep 'optimizer.lr' must look like section.key=v1,v2"),
])
def test_one_bad_point_refuses_the_whole_sweep_naming_it(launch_cli, run_root, args, named):
    done = launch_cli("--config", DEMO, "--run-root", run_root, "--cluster", "slurm", *args)
    assert done.returncode == 2
    assert done.stderr.startswith("launch: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert named in done.stderr
    assert not run_root.exists()  # no sweep directory, nothing submitted


def test_a_sweep_block_in_the_config_file_lists_points(launch_cli, run_root, tmp_path):
    cfg = yaml.safe_load(open(DEMO))
    cfg["sweep"] = {"points": [{"optimizer.lr": 0.01}, {"optimizer.lr": 0.1, "model.dropout": 0.3}],
                    "max_parallel": 1}
    path = tmp_path / "swept.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    done = launch_cli("--config", path, "--run-root", run_root, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-1%1" in done.stdout
    assert "001-lr0.1-dropout0.3" in done.stderr


def test_array_script_golden():
    array = JobArray("0-3", 2, RUN_DIR / "runs.txt")
    text = render_sbatch(golden_slurm("gres", "mirrored"), "mirrored", array.runs_file.parent, PYTHON, 120, array)
    assert "--array=0-3%2" in sbatch_lines(text)
    check_golden("sweep/gres-mirrored-array.sbatch", text)


def test_point_labels_name_values():
    assert Point(3, {"optimizer.lr": 0.1, "model.head_units": [64]}).label() == \
        "optimizer.lr=0.1 model.head_units=[64]"


def test_a_points_config_yaml_is_the_config_dump():
    from core.config import Config, dump
    from launcher.sweep import dump_config

    cfg, cache = Config(), {}
    cfg.optimizer.lr, cfg.model.head_units = 0.5, [8, 4]
    assert dump_config(cfg, cache) == dump(cfg) == dump_config(cfg, cache)


@pytest.mark.slow
def test_without_slurm_the_points_run_here_one_after_another(launch_cli, run_root):
    done = launch_cli("--config", DEMO, "--run-root", run_root, "--cluster", "local", "--sweep",
                      "optimizer.lr=0.003,0.01", "train.epochs=1", "train.steps_per_epoch=3",
                      "train.validation_steps=1", timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep_dir,) = run_root.iterdir()
    runs = [sweep_dir / "000-lr0.003", sweep_dir / "001-lr0.01"]
    starts = [done.stdout.index(f"sweep point {i} (optimizer.lr={lr}) running locally") for i, lr in
              enumerate(("0.003", "0.01"))]
    assert starts[0] < done.stdout.index("finished 1 epochs") < starts[1]  # one after another
    for run in runs:
        assert json.loads((run / "status.json").read_text())["state"] == "completed"
        assert (run / "history.csv").read_text().count("\n") == 2  # header and epoch 1
    assert (sweep_dir / "runs.txt").read_text().split() == [str(r) for r in runs]


@pytest.mark.slurm
def test_a_sweep_beyond_max_array_size_becomes_two_arrays(slurm_cluster, launch_cli, run_root):
    size = int(re.search(r"MaxArraySize\s*=\s*(\d+)", subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True).stdout).group(1))
    lrs = ",".join(f"{0.001 * (i + 1):.3f}" for i in range(size + 1))
    done = launch_cli("--config", DEMO, "--run-root", run_root, "--sweep", f"optimizer.lr={lrs}", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert re.findall(r"^#SBATCH --array=(\S+)$", done.stdout, re.M) == [f"0-{size - 1}", "0"]
    assert (f"MaxArraySize is {size}, so the sweep is split into 2 job arrays: points 0-{size - 1}, "
            f"points {size}") in done.stderr and not run_root.exists()


def test_sweep_flags_on_the_resume_of_one_run_are_refused(launch_cli, tmp_path):
    (tmp_path / "config.yaml").write_text("train: {epochs: 1}\n")
    done = launch_cli("--resume", tmp_path, "--sweep", "optimizer.lr=0.1,0.2", "--dry-run")
    assert done.returncode == 2 and "--resume" in done.stderr and done.stderr.count("\n") == 1, done.stderr

"""`launch` without a cluster: one-line errors, dry runs, emitted scripts, resume and local mode."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import cli
from core import rundir
from core.config import dump, load_config

REPO = Path(__file__).resolve().parent.parent


def one_line_error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code != 0, f"launch {argv} exited 0"
    assert err.count("\n") == 1 and err.startswith("launch: error: "), repr(err)
    return err


@pytest.mark.parametrize("argv, says", [
    (["--config", "configs/missing.yaml"], "configs/missing.yaml does not exist"),
    (["optimizer.learning_rate=0.1"], "unknown key 'optimizer.learning_rate'"),
    (["slurm.nodes=two"], "slurm.nodes in override 'slurm.nodes=two': expected int"),
    (["--nodes", "0"], "slurm.nodes in flag --nodes: 0 is below the minimum 1"),
    (["--gpus", "-1"], "flag --gpus-per-node: -1 is below the minimum 0"),
    (["--nodes", "two"], "--nodes: invalid int value: 'two'"),
    (["--backend", "tpu"], "'tpu' is not one of mirrored, multiworker, horovod"),
    (["--gpu-style", "magic"], "'magic' is not one of gres, gpus-per-node, constraint"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["--nodes", "2", "--backend", "mirrored"], "use --backend multiworker or horovod"),
    (["--job-name", "a\nb"], "control character '\\n'"),
    (["--time", "3"], "signal_lead_s 300 is not shorter than the time limit of 3 min"),
    (["--dry-run", "--emit-sbatch", "x.sbatch"], "not allowed with argument"),
])
def test_bad_input_is_one_line_and_creates_nothing(capsys, run_root, argv, says):
    err = one_line_error(capsys, [*argv, "--run-root", str(run_root)])
    assert says in err
    assert not run_root.exists()


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    assert "not a run directory" in one_line_error(capsys, ["--resume", str(tmp_path), "--dry-run"])


def test_cluster_slurm_without_sbatch(capsys, monkeypatch, run_root, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    err = one_line_error(capsys, ["--cluster", "slurm", "--run-root", str(run_root)])
    assert "sbatch is not on PATH" in err and not run_root.exists()


def test_dry_run_prints_the_script_creates_nothing_and_loads_no_tensorflow(run_root):
    code = (
        "import json, sys\n"
        "from launcher.cli import main\n"
        f"rc = main(['--dry-run', '--run-root', {str(run_root)!r}, '--nodes', '2', "
        "'--backend', 'multiworker'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf_keras', 'submitit'))\n"
        "print(json.dumps({'rc': rc, 'heavy': heavy}), file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result == {"rc": 0, "heavy": []}
    assert done.stdout.startswith("#!/bin/bash\n") and "#SBATCH --nodes=2" in done.stdout
    assert f"--run-dir {run_root.resolve()}/demo-" in done.stdout
    assert not run_root.exists()


def test_emit_sbatch_writes_a_valid_script_and_a_config_that_reloads_equal(capsys, run_root, tmp_path):
    target = tmp_path / "job file.sbatch"
    code = cli.main(["--emit-sbatch", str(target), "--run-root", str(run_root), "--nodes", "2",
                     "--backend", "multiworker", "optimizer.lr=0.01", "--job-name", "it's mine"])
    out = capsys.readouterr().out
    assert code == 0
    (run_dir,) = run_root.iterdir()
    assert f"sbatch '{target}'" in out
    assert target.read_text() == (run_dir / rundir.SBATCH).read_text()
    syntax = subprocess.run(["bash", "-n", str(target)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr

    saved = run_dir / rundir.CONFIG
    cfg = load_config(saved)
    assert dump(cfg) == saved.read_text()
    assert (cfg.slurm.nodes, cfg.optimizer.lr, cfg.slurm.job_name) == (2, 0.01, "it's mine")
    assert (cfg.runtime.run_name, cfg.runtime.python) == (run_dir.name, sys.executable)


def test_resume_reuses_the_run_dir_and_applies_flags(capsys, run_root, tmp_path):
    assert cli.main(["--emit-sbatch", str(tmp_path / "a.sbatch"), "--run-root", str(run_root)]) == 0
    (run_dir,) = run_root.iterdir()
    capsys.readouterr()
    assert cli.main(["--resume", str(run_dir), "--time", "45", "--dry-run"]) == 0
    script = capsys.readouterr().out
    assert "#SBATCH --time=45" in script and f"--run-dir {run_dir}" in script
    assert f"#SBATCH --job-name={run_dir.name}" in script  # the name stays with the run
    assert cli.main(["--resume", str(run_dir), "--time", "45", "--emit-sbatch",
                     str(tmp_path / "b.sbatch")]) == 0
    assert list(run_root.iterdir()) == [run_dir]
    assert load_config(run_dir / rundir.CONFIG).slurm.time_min == 45


def test_runs_subcommand_is_dispatched(monkeypatch):
    from launcher import runs

    seen = []
    monkeypatch.setattr(runs, "show", lambda args: seen.append(args.json) or 7)
    assert cli.main(["runs", "--json"]) == 7 and seen == [True]


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter: rank 1 fails when FAIL_RANK=1, rank 0 outlives it."""
    shim = tmp_path / "fake-python"
    shim.write_text(
        "#!/bin/bash\n"
        'echo "rank $LAUNCH_RANK of $LAUNCH_WORLD_SIZE local $LAUNCH_LOCAL_RANK dir $LAUNCH_RUN_DIR: $*"\n'
        'if [ "${FAIL_RANK:-}" = "$LAUNCH_RANK" ]; then exit 3; fi\n'
        'if [ -n "${FAIL_RANK:-}" ]; then sleep 60; fi\n')
    shim.chmod(0o755)
    return shim


def run_local(launch_cli, run_root, fake_python, *extra, env=None):
    return launch_cli("--cluster", "local", "--backend", "multiworker", "--nodes", "2",
                      "--run-root", run_root, f"runtime.python={fake_python}", *extra, env=env)


def test_local_mode_runs_every_rank_and_streams_rank_0(launch_cli, run_root, fake_python):
    done = run_local(launch_cli, run_root, fake_python)
    assert done.returncode == 0, done.stderr
    (run_dir,) = run_root.iterdir()
    first, *rest = done.stdout.splitlines()
    assert first.startswith("launch: running locally (runtime.cluster is local): 2 processes")
    assert rest == [f"rank 0 of 2 local 0 dir {run_dir}: -u -m training.main --run-dir {run_dir}"]
    assert (run_dir / "logs" / "local-0.out").read_text() == rest[0] + "\n"
    assert (run_dir / "logs" / "local-1.out").read_text().startswith("rank 1 of 2 local 1")


def test_local_mode_reports_the_failed_rank_and_stops_the_others(launch_cli, run_root, fake_python):
    done = run_local(launch_cli, run_root, fake_python, "runtime.worker_timeout_s=1",
                     env={"FAIL_RANK": "1"})
    assert done.returncode == 3
    assert "launch: rank 1 failed with exit code 3" in done.stderr
    assert "stopped rank(s) 0" in done.stderr  # rank 0 would otherwise sleep for a minute


@pytest.fixture
def port_python(tmp_path: Path) -> Path:
    """Stands in for the interpreter: each rank writes the LAUNCH_PORT it was given to its log."""
    shim = tmp_path / "port-python"
    shim.write_text('#!/bin/bash\necho "rank $LAUNCH_RANK port ${LAUNCH_PORT:-none}"\n')
    shim.chmod(0o755)
    return shim


def told_ports(run_dir: Path) -> list[str]:
    return [(run_dir / "logs" / f"local-{rank}.out").read_text().split()[-1] for rank in (0, 1)]


def test_local_ranks_are_told_the_same_free_ports_and_a_fixed_port_is_left_to_the_config(
        launch_cli, run_root, port_python, tmp_path):
    from training.cluster import cluster_from_env, worker_addresses

    assert run_local(launch_cli, run_root, port_python).returncode == 0
    (run_dir,) = run_root.iterdir()
    told = told_ports(run_dir)
    assert told[0] == told[1] != "none"
    # What each rank makes of it: two workers on free ports that every rank lists alike.
    specs = [cluster_from_env({"LAUNCH_RANK": str(r), "LAUNCH_WORLD_SIZE": "2", "LAUNCH_PORT": told[0]})
             for r in (0, 1)]
    addresses = worker_addresses(specs[0], 0)
    assert addresses == worker_addresses(specs[1], 0) and len(set(addresses)) == 2
    with socket.socket() as first, socket.socket() as second:  # nothing else holds them
        first.bind(("", int(told[0])))
        second.bind(("", int(told[0]) + 1))

    fixed_root = tmp_path / "fixed"
    assert run_local(launch_cli, fixed_root, port_python, "runtime.port=41000").returncode == 0
    assert told_ports(next(fixed_root.iterdir())) == ["none", "none"]


@pytest.mark.parametrize("text, minutes", [("90", 90), ("1:30", 2), ("1:00:00", 60), ("0:1:01", 2),
                                           ("1-2", 1560), ("1-2:30", 1590), ("2-00:00:30", 2881)])
def test_time_limits_in_sbatchs_formats_become_minutes(text, minutes):
    from launcher.options import slurm_minutes

    assert slurm_minutes(text) == minutes


def test_a_time_limit_sbatch_would_refuse_is_one_line_naming_the_formats(capsys):
    assert cli.main(["--time", "1:xx", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'1:xx' is not a time limit" in err and "HH:MM:SS" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, says", [
    # Misspelt commands, sections, keys and names: the closest one, by difflib.
    (["evl", "runs/demo-1"], "'evl' is not a launch command; did you mean 'eval'?"),
    (["optimzer.lr=0.1"], "unknown section 'optimzer' in override 'optimzer.lr=0.1'; valid sections: "),
    (["optimzer.lr=0.1"], "; did you mean 'optimizer'?"),
    (["data.batchsize=64"], "did you mean 'data.batch_size'?"),
    (["train.batch_size=64"], "did you mean 'data.batch_size'?"),
    (["batchsize=64"], "must look like section.key=value, e.g. optimizer.lr=0.05; did you mean 'data.batch_size=64'?"),
    (["model.name=resnet51"], "model.name 'resnet51' is not a image model"),
    (["model.name=resnet51"], "did you mean 'resnet50'?"),
    (["optimizer.name=adm"], "'adm' is not one of sgd, adam, adamw; did you mean 'adam'?"),
    (["schedule.name=cosin"], "did you mean 'cosine'?"),
    (["--backend", "multiworkers"], "did you mean 'multiworker'?"),
    # sbatch's spellings that launch says its own way.
    (["--mem", "16G"], "--mem 16G is sbatch's option, not launch's: use slurm.mem=16G (memory per node"),
    (["--mem=16G"], "use slurm.mem=16G"),
    (["--gres=gpu:2"], "use --gpus 2 (GPUs per node, as --gres counts them; sbatch's --gpus counts per job)"),
    (["--gres", "gpu:a100:4"], "use --gpus 4 --gpu-type a100 (GPUs per node"),
    (["-G", "8"], "launch's --gpus counts GPUs per node (sbatch's -G/--gpus per job)"),
    (["--gpus-per-task", "1"], "give GPUs per node with --gpus N"),
    (["-c", "8"], "-c 8 is sbatch's option, not launch's: use slurm.cpus_per_task=8"),
    (["-c8"], "use slurm.cpus_per_task=8"),
    (["--cpus-per-task=4"], "use slurm.cpus_per_task=4"),
    (["--ntasks", "4"], "launch starts one task per node (one per GPU with --backend horovod)"),
    (["--exclusive"], "use slurm.exclusive=true"),
    (["-C", "v100"], "use slurm.constraint=v100"),
    (["--output", "x.out"], "RUN_DIR/logs/slurm-<job id>.out"),
    (["--reservation=ml"], "slurm.extra=[--reservation=ml]"),
    (["--array", "0-3"], "launch --sweep KEY=V1,V2 makes the job array"),
    # Counts launch would only fail on later.
    (["--sweep", "optimizer.lr=0.1,0.2", "--max-parallel", "0"], "--max-parallel: 0 is below the minimum 1"),
    (["data.batch_size=7", "--nodes", "2"],
     "data.batch_size 7 (the global batch) does not divide over 2 replicas (2 node(s) x 1 CPU process, no "
     "GPUs); use data.batch_size=8"),
    (["data.batch_size=30", "--gpus", "4"], "does not divide over 4 replicas (1 node(s) x 4 GPU(s)); use "
                                            "data.batch_size=32"),
    (["data.batch_size=64", "runtime.cpu_devices=3"], "over 3 replicas (3 CPU device(s) of one process"),
])
def test_slurm_users_mistakes_are_one_line_naming_the_fix(capsys, run_root, argv, says):
    err = one_line_error(capsys, [*argv, "--run-root", str(run_root), "--dry-run"])
    assert says in err
    assert cli.main([*argv, "--run-root", str(run_root), "--dry-run"]) == 2
    assert not run_root.exists()


def test_sbatch_short_options_are_taken_as_sbatch_means_them(capsys, run_root):
    assert cli.main(["-N", "2", "-p", "debug", "-t", "1:00:00", "-A", "proj", "-q", "high", "-J", "mine",
                     "--cluster", "slurm", "--no-preflight", "--dry-run", "--run-root", str(run_root)]) == 0
    script = capsys.readouterr().out
    for line in ("--nodes=2", "--partition=debug", "--time=60", "--account=proj", "--qos=high", "--job-name=mine"):
        assert f"#SBATCH {line}\n" in script


def test_a_sweep_block_with_max_parallel_0_is_refused(capsys, run_root, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text((REPO / "configs" / "demo.yaml").read_text()
                      + "sweep:\n  grid: {optimizer.lr: [0.1, 0.2]}\n  max_parallel: 0\n")
    err = one_line_error(capsys, ["--config", str(config), "--run-root", str(run_root), "--dry-run"])
    assert "sweep.max_parallel 0: expected a whole number of tasks at once, 1 or more; leave it out" in err


def test_launch_config_says_where_every_value_came_from(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli.main(["config", "data.batch_size=128", "--nodes", "2", "--run-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "task: image  # default"
    for line in ("  batch_size: 128  # override 'data.batch_size=128'", "  nodes: 2  # flag --nodes",
                 "  source: demo  # configs/demo.yaml", "  seed: 42  # default", "  data_dir: ''  # default",
                 "  backend: multiworker  # set by launch from other keys", "  head_units: [64]  # configs/demo.yaml"):
        assert line in lines, line
    # What it prints is a config file: loaded again, it is the same config.
    (tmp_path / "shown.yaml").write_text(out)
    assert dump(load_config(tmp_path / "shown.yaml")) == dump(
        load_config(REPO / "configs" / "demo.yaml", ["data.batch_size=128", "slurm.nodes=2",
                                                      f"runtime.run_root={tmp_path}"]))
    assert not (tmp_path / "logs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["shown.yaml"]


def test_launch_config_refuses_what_launch_refuses(capsys):
    err = one_line_error(capsys, ["config", "optimzer.lr=0.1"])
    assert "did you mean 'optimizer'?" in err and capsys.readouterr().out == ""

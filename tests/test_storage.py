"""Object storage against a real S3-compatible server (moto's, over HTTP on 127.0.0.1): configs
and data checked at launch, shards staged once per node, the run directory mirrored with its
checkpoint pointer last, and every failure a user can cause as one line naming the URL."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core import storage
from core.config import StorageConfig
from s3_server import KEY_ID, client_env, s3, s3_endpoint, start_server  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
SHARDS = {"train-00000-of-00002": 300, "train-00001-of-00002": 200, "validation-00000-of-00001": 100}


def put_shards(url: str, sizes: dict[str, int] = SHARDS, manifest: bool = True) -> None:
    for name, size in sizes.items():
        storage.write_bytes(f"{url}/{name}", bytes([7]) * size)
    labels = {"classes": ["a", "b", "c"], "counts": {"train": 36, "validation": 9}, "label_offset": 0}
    if manifest:
        labels["shards"] = {name: {"bytes": size, "records": 18} for name, size in sizes.items()}
    storage.write_bytes(f"{url}/labels.json", json.dumps(labels).encode())


def launch(launch_cli, *args, env=None):
    return launch_cli("--cluster", "local", *args, env=env, timeout=120)


def one_line_error(done) -> str:
    assert done.returncode != 0, done.stdout
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("launch: error: "), done.stderr
    return done.stderr


# --- at launch ----------------------------------------------------------------------------------

def test_config_from_a_bucket_is_used(s3, launch_cli):
    storage.write_bytes(f"{s3}/cfg/x.yaml", b"runtime:\n  run_name: from-the-bucket\nslurm:\n  time_min: 17\n")
    done = launch(launch_cli, "--config", f"{s3}/cfg/x.yaml", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "/from-the-bucket-" in done.stdout and "--time=17" in done.stdout


def test_missing_config_key_names_the_url(s3, launch_cli):
    err = one_line_error(launch(launch_cli, "--config", f"{s3}/cfg/nope.yaml", "--dry-run"))
    assert f"{s3}/cfg/nope.yaml does not exist" in err


def test_missing_bucket_is_named(s3, launch_cli, run_root):
    err = one_line_error(launch(launch_cli, "--run-root", run_root, "data.source=tfrecord",
                                "data.data_dir=s3://no-such-bucket-here/shards"))
    assert "bucket no-such-bucket-here does not exist" in err and "create the bucket" in err
    assert not run_root.exists()


def test_s3_shards_pass_and_a_truncated_one_is_refused_at_launch(s3, launch_cli, run_root):
    from launcher import preflight
    from core.config import DataConfig

    put_shards(f"{s3}/good")
    preflight.check_data(DataConfig(source="tfrecord", data_dir=f"{s3}/good"))  # no error
    put_shards(f"{s3}/bad")
    storage.write_bytes(f"{s3}/bad/train-00001-of-00002", b"\0" * 150)  # cut short after upload
    err = one_line_error(launch(launch_cli, "--run-root", run_root, "data.source=tfrecord",
                                f"data.data_dir={s3}/bad"))
    assert f"{s3}/bad/train-00001-of-00002 is 150 bytes but" in err
    assert not run_root.exists()


def test_no_credentials_says_what_to_set(s3, launch_cli, tmp_path):
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
           "AWS_CONFIG_FILE": str(tmp_path / "none")}
    environ = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "launcher.cli", "--config", f"{s3}/cfg/x.yaml", "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**environ, **{k: v for k, v in env.items() if v}})
    err = one_line_error(done)
    assert f"no credentials for {s3}/cfg/x.yaml" in err and "AWS_ACCESS_KEY_ID" in err


def test_wrong_endpoint_says_what_to_set(s3, launch_cli):
    err = one_line_error(launch(launch_cli, "--config", f"{s3}/cfg/x.yaml", "--dry-run",
                                env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}))
    assert "cannot reach the object store at http://127.0.0.1:9" in err and "AWS_ENDPOINT_URL" in err


def test_access_denied_names_the_url_and_bucket(s3_endpoint, launch_cli):
    proc, url = start_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # this server checks keys
    try:
        env = {**client_env(url), "AWS_ACCESS_KEY_ID": "AKIDUNKNOWN", "AWS_SECRET_ACCESS_KEY": "wrong"}
        err = one_line_error(launch(launch_cli, "--config", "s3://private/x.yaml", "--dry-run", env=env))
        assert "access denied to s3://private/x.yaml" in err and "bucket private" in err
    finally:
        proc.terminate()


def test_mirror_must_be_a_bucket_that_exists(s3, launch_cli, run_root):
    err = one_line_error(launch(launch_cli, "--run-root", run_root, "storage.mirror=s3://no-such-mirror/runs"))
    assert "bucket no-such-mirror does not exist" in err
    err = one_line_error(launch(launch_cli, "--run-root", run_root, f"storage.mirror={run_root}"))
    assert "is not an s3:// URL" in err
    assert not run_root.exists()


# --- on the node --------------------------------------------------------------------------------

def test_staging_downloads_once_per_node_and_refetches_a_replaced_object(s3, tmp_path):
    from training.data.stage import stage

    put_shards(f"{s3}/data")
    cfg = StorageConfig(scratch=str(tmp_path / "scratch"))
    lines = []
    local = stage(f"{s3}/data", cfg, log=lines.append)
    assert sorted(p.name for p in local.iterdir() if not p.name.startswith(".")) == sorted([*SHARDS, "labels.json"])
    assert (local / "train-00000-of-00002").read_bytes() == bytes([7]) * 300
    assert "4 of 4 objects downloaded" in lines[-1]
    stage(f"{s3}/data", cfg, log=lines.append)  # a requeued job on the same node
    assert "0 of 4 objects downloaded" in lines[-1] and "4 already on this node" in lines[-1]
    storage.write_bytes(f"{s3}/data/validation-00000-of-00001", bytes([9]) * 100)  # same size, new ETag
    stage(f"{s3}/data", cfg, log=lines.append)
    assert "1 of 4 objects downloaded" in lines[-1]
    assert (local / "validation-00000-of-00001").read_bytes() == bytes([9]) * 100


def run_dir_with_checkpoint(tmp_path: Path, step: int) -> Path:
    run_dir = tmp_path / "demo-20261125-101010"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / f"latest-{step:09d}.h5").write_bytes(b"weights %d" % step)
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"weights": f"latest-{step:09d}.h5",
                                                                      "step": step}))
    (run_dir / "history.csv").write_text("epoch,loss\n1,0.5\n")
    (run_dir / ".writer.lock").write_text("job 1")
    return run_dir


def test_mirror_uploads_files_then_the_pointer_and_lists_what_failed(s3, tmp_path):
    from training.mirror import Mirror

    run_dir = run_dir_with_checkpoint(tmp_path, 20)
    mirror = Mirror(run_dir, f"{s3}/runs", log=lambda line: None)
    assert mirror.sync() == []
    url = f"{s3}/runs/{run_dir.name}"
    assert storage.read_bytes(f"{url}/checkpoints/latest-000000020.h5") == b"weights 20"
    assert json.loads(storage.read_bytes(f"{url}/checkpoints/latest.json"))["step"] == 20
    assert not storage.is_file(f"{url}/.writer.lock")
    mirror.publish({"run": run_dir.name, "accuracy": 0.9, "created": "1"})
    Mirror(tmp_path, f"{s3}/runs", log=lambda line: None).publish({"run": "other", "created": "2"})
    assert [e["run"] for e in storage.read_index(f"{s3}/runs")] == [run_dir.name, "other"]
    assert [e["run"] for e in json.loads(storage.read_bytes(f"{s3}/runs/runs.json"))] == [run_dir.name, "other"]

    # The store goes away mid-run: training goes on, and mirror.json says what is not there.
    run_dir_with_checkpoint(tmp_path, 40)
    broken = Mirror(run_dir, "s3://no-such-bucket-anywhere/runs", log=lambda line: None)
    broken._stop.set()  # no waits between retries in this test
    pending = broken.sync()
    assert "checkpoints/latest.json" in pending and "checkpoints/latest-000000040.h5" in pending
    state = json.loads((run_dir / "mirror.json").read_text())
    assert state["pending"] == pending and state["error"]


def test_two_runs_publishing_at_once_both_end_in_runs_json(s3, tmp_path, monkeypatch):
    """Run A lists the index, then run B publishes whole, then A writes runs.json: A's listing
    lacked B, and a single write would drop B from runs.json."""
    from training.mirror import Mirror

    real_read = storage.read_index
    calls = []

    def read_then_b_publishes(*args):
        seen = real_read(*args)
        calls.append(len(seen))
        if len(calls) == 1:
            monkeypatch.setattr(storage, "read_index", real_read)  # B reads the store as it is
            Mirror(tmp_path / "b", f"{s3}/race", log=lambda line: None).publish({"run": "b", "created": "2"})
            monkeypatch.setattr(storage, "read_index", read_then_b_publishes)
        return seen

    monkeypatch.setattr(storage, "read_index", read_then_b_publishes)
    Mirror(tmp_path / "a", f"{s3}/race", log=lambda line: None).publish({"run": "a", "created": "1"})
    assert calls[0] == 1  # A's first listing had only its own entry
    assert [e["run"] for e in json.loads(storage.read_bytes(f"{s3}/race/runs.json"))] == ["a", "b"]


def test_launch_runs_lists_a_mirror_from_its_index(s3, launch_cli):
    from training.mirror import Mirror

    for name, state, acc in (("r1-20261125-100000", "completed", 0.93), ("r2-20261125-110000", "running", 0.5)):
        Mirror(Path("/nonexistent") / name, f"{s3}/runs", log=lambda line: None).publish(
            {"run": name, "state": state, "best_val_accuracy": acc, "epochs_done": 3, "epochs_total": 8,
             "created": name[3:], "url": f"{s3}/runs/{name}"})
    done = launch_cli("runs", "--run-root", f"{s3}/runs")
    assert done.returncode == 0, done.stderr
    rows = done.stdout.splitlines()[1:]
    assert rows[0].split()[:5] == ["r1-20261125-100000", "-", "COMPLETED", "3/8", "0.9300"]
    assert rows[1].split()[2] == "RUNNING" and rows[1].endswith(f"{s3}/runs/r2-20261125-110000")
    done = launch_cli("runs", "--run-root", "s3://no-such-bucket-here/runs")
    assert done.returncode == 2 and "bucket no-such-bucket-here does not exist" in done.stderr


def test_a_weights_file_in_a_bucket_is_staged_once(s3, tmp_path):
    from training.data.stage import stage_file

    storage.write_bytes(f"{s3}/models/init.h5", b"h5 bytes")
    cfg = StorageConfig(scratch=str(tmp_path))
    local = stage_file(f"{s3}/models/init.h5", cfg)
    assert local.read_bytes() == b"h5 bytes"
    before = local.stat().st_mtime_ns
    assert stage_file(f"{s3}/models/init.h5", cfg).stat().st_mtime_ns == before  # not fetched again
    with pytest.raises(storage.StorageError, match=f"{s3}/models/nope.h5 does not exist"):
        stage_file(f"{s3}/models/nope.h5", cfg)


def test_local_paths_never_load_the_object_store_stack(tmp_path):
    import subprocess
    import sys

    code = ("import sys; from launcher import cli; "
            f"code = cli.main(['--cluster', 'local', '--run-root', {str(tmp_path)!r}, '--dry-run']); "
            "assert code == 0, code; "
            "loaded = [m for m in ('s3fs', 'fsspec', 'botocore', 'aiobotocore') if m in sys.modules]; "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_sweep_points_are_mirrored_under_their_sweep(s3, tmp_path):
    from training.mirror import Mirror, index_entry

    sweep = tmp_path / "demo-sweep-20261125-101000"
    point = run_dir_with_checkpoint(sweep, 20).rename(sweep / "000-lr0.01")
    (sweep / "sweep.yaml").write_text("points: []\n")
    mirror = Mirror(point, f"{s3}/runs", log=lambda line: None)
    assert mirror.sync() == []
    assert storage.is_file(f"{s3}/runs/demo-sweep-20261125-101000/000-lr0.01/checkpoints/latest.json")
    mirror.publish(index_entry(point, mirror.url))
    assert [e["run"] for e in storage.read_index(f"{s3}/runs")] == ["demo-sweep-20261125-101000/000-lr0.01"]

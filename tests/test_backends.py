"""Backend selection errors a user can hit, as one line each."""
import subprocess
import sys
from pathlib import Path

from core.config import dump, load_config

REPO = Path(__file__).resolve().parent.parent


def run_trainer(run_dir: Path, prelude: str = "pass") -> subprocess.CompletedProcess:
    code = f"import sys; {prelude}; from training.main import main; sys.exit(main(['--run-dir', sys.argv[1]]))"
    return subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)


def test_missing_horovod_points_at_the_build_script(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "config.yaml").write_text(dump(load_config(None, ["runtime.backend=horovod"])))
    # sys.modules[name] = None makes `import horovod` fail as on a machine without it.
    done = run_trainer(tmp_path, "sys.modules['horovod'] = None")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("training: error: runtime.backend horovod needs Horovod"), done.stderr[-2000:]
    assert "training/horovod_build/build.sh" in last


def test_global_batch_that_does_not_divide_over_replicas_is_one_line(tmp_path):
    (tmp_path / "logs").mkdir()
    cfg = load_config(REPO / "configs" / "demo.yaml", ["runtime.cpu_devices=2"])
    cfg.data.batch_size = 63  # launch refuses it (core.config.check); the trainer checks again
    (tmp_path / "config.yaml").write_text(dump(cfg))
    done = run_trainer(tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "data.batch_size 63 does not divide evenly over 2 replicas" in last, done.stderr[-2000:]

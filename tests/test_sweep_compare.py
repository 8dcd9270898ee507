"""`launch runs --sweep`: the points side by side, best first, with compare.csv and compare.png."""
from __future__ import annotations

import csv
import json

import yaml

from launcher import sweep_compare


def fake_sweep(root, curves):
    """A sweep directory whose point i has trained the val accuracies curves[i] (none: not started)."""
    sweep = root / "demo-sweep-20261125-101000"
    points = []
    for i, accs in enumerate(curves):
        run = sweep / f"{i:03d}-lr{i}"
        (run / "logs").mkdir(parents=True)
        (run / "config.yaml").write_text("train: {epochs: 3}\n")
        points.append({"index": i, "values": {"optimizer.lr": 0.01 * (i + 1)}, "run_dir": run.name})
        if not accs:
            continue
        rows = ["epoch,val_loss,val_accuracy,epoch_time_s"]
        rows += [f"{e},{1 - a:.3f},{a},2.5" for e, a in enumerate(accs, 1)]
        (run / "history.csv").write_text("\n".join(rows) + "\n")
        (run / "status.json").write_text(json.dumps({"state": "completed", "epoch": len(accs)}))
    (sweep / "sweep.yaml").write_text(yaml.safe_dump({"points": points}))
    return sweep


def test_points_are_sorted_by_the_target_metric_and_written_to_csv_and_png(tmp_path, capsys):
    sweep = fake_sweep(tmp_path, [[0.5, 0.7, 0.6], [0.6, 0.9, 0.8], [], [0.2, 0.3, 0.4]])
    assert sweep_compare.main(str(sweep), "val_accuracy") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["1", "0", "3", "2"]  # best first, unstarted last
    with open(sweep / "compare.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["point"], r["best_val_acc"], r["best_epoch"], r["wall_s"]) for r in rows[:2]] == [
        ("1", "0.9000", "2", "7.5"), ("0", "0.7000", "2", "7.5")]
    assert rows[0]["optimizer.lr"] == "0.02" and rows[0]["state"] == "COMPLETED"  # no job id: status.json says
    assert rows[3]["best_val_acc"] == "-" and len(rows) == 4
    assert (sweep / "compare.png").read_bytes()[:4] == b"\x89PNG"


def test_sorting_by_val_loss_puts_the_lowest_first(tmp_path, capsys):
    sweep = fake_sweep(tmp_path, [[0.5, 0.7], [0.9, 0.95]])
    sweep_compare.main(str(sweep), "val_loss")
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "1"


def test_a_folder_that_is_no_sweep_is_one_line(launch_cli, tmp_path):
    done = launch_cli("runs", "--sweep", tmp_path)
    assert done.returncode == 2 and "not a sweep directory" in done.stderr and done.stderr.count("\n") == 1


def test_points_that_ended_before_the_array_was_cancelled_show_their_own_end(tmp_path, monkeypatch, capsys):
    import functools

    from launcher import runs

    sweep = fake_sweep(tmp_path, [[0.5, 0.9], [0.6, 0.7], [0.4]])
    for i, (run, written) in enumerate(zip(sorted(p for p in sweep.iterdir() if p.is_dir()),
                                           ("completed", "stopped", "killed"))):
        (run / "status.json").write_text(json.dumps({"state": written, "epoch": 2, "job_id": f"100_{i}"}))
        (run / "jobs.txt").write_text(f"100_{i}\n")
    cancelled = {f"100_{i}": "CANCELLED" for i in range(3)}  # `scancel 100` after the tasks had ended
    monkeypatch.setattr(sweep_compare, "list_runs", functools.partial(
        runs.list_runs, squeue=lambda ids: {j: s for j, s in cancelled.items() if j in ids}, sacct=lambda ids: {}))
    assert sweep_compare.main(str(sweep), "val_accuracy") == 0
    with open(sweep / "compare.csv") as fh:
        states = {r["point"]: r["state"] for r in csv.DictReader(fh)}
    assert states == {"0": "COMPLETED", "1": "STOPPED", "2": "CANCELLED"}

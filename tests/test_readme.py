"""Every command line in the code blocks of README.md and docs/*.md, run on the local cluster as
the page shows it (a line on several pages runs once, where it first appears).

Only the run root (LAUNCH_RUN_ROOT and the example run `runs/<name>-<date>-<time>`) and the data
paths (`photos/`, `shards/`, made in a scratch folder the commands run in) are substituted. The
lines are found, not listed: a command added to any section is run too, and fails here until it
runs as written or SKIP says why it cannot run on this machine. What each must do is decided by
what kind of command it is (`expectation`), from what the page says of it: a dry run prints a
script and creates nothing, a submission prints "submitted job N", eval/predict/convert jobs end
COMPLETED and write their file, and so on.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from core import rundir
from core.config import load_config
from s3_server import client_env, s3_endpoint  # noqa: F401 (fixture)
from slurm_jobs import wait_final

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("readme-site")]  # one worker: its module fixture once

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
PROGRAMS = {"launch", "python", "python3", "pip", "sbatch", "squeue", "scancel", "tensorboard", "pytest",
            "bash"}
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
# A run directory as the README names one: runs/<name>-<YYYYmmdd>-<HHMMSS>.
EXAMPLE_RUN = re.compile(r"^(?:\./)?runs/[\w.-]+-\d{8}-\d{6}(?:-\d+)?/?$")
# A sweep directory as the README names one; replaced by the sweep its own sweep line made.
EXAMPLE_SWEEP = re.compile(r"^(?:\./)?runs/[\w.-]+-sweep-\d{8}-\d{6}(?:-\d+)?/?$")
# The object-store lines (docs/storage.md), served by a local S3-compatible server (tests/s3_server.py).
EXAMPLE_MIRROR = "s3://ml-runs/alice"
EXAMPLE_MIRRORED_RUN = re.compile(r"^s3://ml-runs/alice/[\w.-]+-\d{8}-\d{6}(?:-\d+)?/?$")
# Command-line prefix -> why it cannot run on this machine.
SKIP = {
    "pip install": "installs packages; this test runs the checkout as it is",
    "pip wheel": "builds the wheel; tests/test_package.py builds one and installs it outside the checkout",
    "python3 -m venv": "makes a virtual environment to install into; this test runs the checkout as it is",
    "python3 -m pytest": "runs the test suite, this test included",
    "./tests/install_and_run.sh": "installs system packages and runs the whole suite, this test included",
    "tensorboard ": "a web server that runs until it is stopped",
    "launch --nodes 1 --gpus 4 --gpu-type a100 --config configs/resnet50_imagenet.yaml":
        "needs four GPUs per node and ImageNet shards; the local cluster has two stand-in GPUs per node",
    "launch --config configs/demo.yaml container.image=./build/containers/test-image.sqsh":
        "the image is in the checkout, not in this test's scratch folder; "
        "tests/test_container_train_slurm.py trains the demo in it",
    "launch --config configs/demo.yaml container.engine=apptainer": "Apptainer is not installed on the local cluster",
    "launch gpucheck --gpus 1 container.image=/shared/images/trainer.sqsh":
        "names a site's image; tests/test_containers_slurm.py runs launch gpucheck in the test image",
}


@dataclass(frozen=True)
class Line:
    """One command line of the README: its text, and its steps (a `&&` chain is several)."""

    text: str
    steps: tuple[tuple[str, ...], ...]
    page: str = "README.md"


def code_blocks(markdown: str) -> list[list[str]]:
    """The lines of each shell code block: ``` fences (shell or no language) and indented blocks."""
    blocks, current, fence = [], None, None
    previous_blank = True
    for line in markdown.splitlines():
        if fence is not None:
            if line.strip().startswith("```"):
                if fence in SHELL_BLOCKS:
                    blocks.append(current)
                fence, current = None, None
            else:
                current.append(line)
            continue
        if line.strip().startswith("```"):
            fence, current = line.strip()[3:].strip().lower(), []
            continue
        if line.startswith("    ") and line.strip() and (current is not None or previous_blank):
            current = current if current is not None else []
            current.append(line[4:])
        elif line.strip() and current is not None:
            blocks.append(current)
            current = None
        previous_blank = not line.strip()
    if current is not None and fence is None:
        blocks.append(current)
    return blocks


def readme_lines(markdown: str, page: str = "README.md") -> list[Line]:
    """Every command line of a page's shell blocks, comments dropped, `&&` chains split."""
    found = []
    for block in code_blocks(markdown):
        for raw in block:
            text = raw.strip().removeprefix("$ ")
            words = shlex.split(text, comments=True) if text else []
            command = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]
            if not command or not (command[0] in PROGRAMS or command[0].startswith("./")):
                continue
            steps, step = [], []
            for word in words:
                if word == "&&":
                    steps.append(tuple(step))
                    step = []
                else:
                    step.append(word)
            steps.append(tuple(step))
            found.append(Line(shlex.join(words).replace("'&&'", "&&"), tuple(steps), page))
    return found


def documented_lines(pages: list[Path]) -> list[Line]:
    """The command lines of every page in order, each text once (where it first appears)."""
    seen, lines = set(), []
    for path in pages:
        for line in readme_lines(path.read_text(), path.relative_to(REPO).as_posix()):
            if line.text not in seen:
                seen.add(line.text)
                lines.append(line)
    return lines


LINES = documented_lines(PAGES)


def test_the_readme_has_commands_to_run():
    assert len(LINES) >= 10 and any(" eval " in line.text for line in LINES)
    pages = {line.page for line in LINES}
    assert {"README.md", "docs/quickstart.md", "docs/runs.md", "docs/storage.md", "docs/text.md"} <= pages


def _seed_buckets(endpoint: str, run_dir: Path) -> str:
    """The buckets the README's object-store lines name: a config, the demo shards, and a mirror
    holding a copy of `run_dir` with its results-index entry. Returns the mirrored run's URL."""
    from core import storage
    from training.data.demo import cache_root, prepare_demo
    from training.mirror import Mirror

    saved = dict(os.environ)
    os.environ.update(client_env(endpoint))
    storage._filesystem.cache_clear()
    try:
        fs = storage.filesystem()
        for bucket in ("ml-configs", "datasets", "ml-runs"):
            fs.mkdir(bucket)
        storage.upload(str(REPO / "configs" / "demo.yaml"), "s3://ml-configs/demo.yaml")
        for path in prepare_demo(cache_root()).iterdir():
            if path.is_file():
                storage.upload(str(path), f"s3://datasets/digits-v1/{path.name}")
        url = f"{EXAMPLE_MIRROR}/{run_dir.name}-2"
        for path in (p for p in run_dir.rglob("*") if p.is_file()):
            storage.upload(str(path), f"{url}/{path.relative_to(run_dir).as_posix()}")
        Mirror(run_dir.parent / f"{run_dir.name}-2", EXAMPLE_MIRROR, log=lambda line: None).publish(
            {"run": f"{run_dir.name}-2", "state": "stopped", "url": url})
        return url
    finally:
        os.environ.clear()
        os.environ.update(saved)
        storage._filesystem.cache_clear()


@pytest.fixture(scope="module")
def site(tmp_path_factory, slurm_cluster, s3_endpoint) -> dict:
    """A scratch folder the commands run in: configs/, photos/, a run to evaluate and resume, and
    an S3-compatible server holding what the object-store section names."""
    from PIL import Image

    cwd = tmp_path_factory.mktemp("readme")
    (cwd / "configs").symlink_to(REPO / "configs")
    for split, count in (("train", 6), ("val", 3)):
        for cls, colour in (("cat", (200, 60, 20)), ("dog", (20, 60, 200))):
            folder = cwd / "photos" / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (48, 36), tuple(c + 5 * i for c in colour)).save(folder / f"{i}.jpg")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
           "LAUNCH_RUN_ROOT": str(cwd / "runs"), "PYTHONPATH": str(REPO), **client_env(s3_endpoint)}
    emitted = run_step(["launch", "--emit-sbatch", str(cwd / "first.sh"), "--config", "configs/demo.yaml"],
                       cwd, env)
    assert emitted.returncode == 0, emitted.stderr
    (run_dir,) = (cwd / "runs").iterdir()
    _tiny_best_model(run_dir)
    mirrored = _seed_buckets(s3_endpoint, run_dir)
    _movie_review_tree(cwd / "aclImdb")
    emitted = run_step(["launch", "--emit-sbatch", str(cwd / "text.sh"), "--config", "configs/sentiment_demo.yaml"],
                       cwd, env)
    assert emitted.returncode == 0, emitted.stderr
    (text_run,) = (p for p in (cwd / "runs").iterdir() if p.name.startswith("sentiment_demo-"))
    _tiny_text_model(text_run)
    return {"cwd": cwd, "env": env, "run": run_dir, "text_run": text_run, "mirrored": mirrored, "jobs": []}


def _movie_review_tree(root: Path) -> None:
    """The large movie-review set's layout, small: train/ and test/ by class, and unsup/."""
    words = {"pos": ["great", "moving", "superb", "fun"], "neg": ["tedious", "dull", "mess", "bland"]}
    for split, count in (("train", 80), ("test", 70)):
        for label, vocabulary in words.items():
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}_{i % 10}.txt").write_text(f"a {vocabulary[i % 4]} film, {vocabulary[(i + 1) % 4]} too")
    (root / "train" / "unsup").mkdir()
    (root / "train" / "unsup" / "0_0.txt").write_text("no label")


def _tiny_text_model(run_dir: Path) -> None:
    """A text run's tokenizer, model spec and best.h5 (untrained), so predict has a model."""
    from core.config import from_dict
    from training import tokenizer
    from training.text_models import build_text_model

    import yaml

    cfg = from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
    vocabulary = ["", "[UNK]", "a", "film", "tedious", "overlong", "mess", "great"]
    (run_dir / "model").mkdir(exist_ok=True)
    tokenizer.save(tokenizer.tokenizer_path(run_dir), cfg.text, vocabulary)
    (run_dir / "model" / "model_spec.json").write_text('{"task": "text", "classes": ["neg", "pos"]}')
    model = build_text_model(cfg.model, cfg.text, len(vocabulary), 2)
    (run_dir / "checkpoints").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(run_dir / "checkpoints" / "best.h5", save_format="h5")


def _tiny_best_model(run_dir: Path) -> None:
    """A best.h5 of the shape of the run's config (10 classes), so eval and predict have a model."""
    from training.keras_compat import keras

    size = load_config(run_dir / rundir.CONFIG).data.image_size
    model = keras.Sequential([keras.Input((size, size, 3)), keras.layers.Rescaling(1 / 255.0),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, "softmax")])
    (run_dir / "checkpoints").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save(run_dir / "checkpoints" / "best.h5", save_format="h5")


def run_step(step: list[str], cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    argv = list(step)
    if argv[0] == "launch":
        argv[:1] = [sys.executable, "-m", "launcher.cli"]
    elif argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def substitute(step: tuple[str, ...], site: dict) -> list[str]:
    if any(EXAMPLE_SWEEP.match(word) for word in step) and "sweep" not in site:
        pytest.skip("names the sweep that the README's sweep line makes; run the whole file")
    return [site["sweep"] if EXAMPLE_SWEEP.match(word) else
            str(site["text_run"]) if EXAMPLE_RUN.match(word) and "sentiment" in word else
            str(site["run"]) if EXAMPLE_RUN.match(word) else
            site["mirrored"] if EXAMPLE_MIRRORED_RUN.match(word) else word for word in step]


def _job(done: subprocess.CompletedProcess) -> str:
    found = re.search(r"^submitted job (?:array )?(\d+)", done.stdout, re.M)
    assert found, f"no 'submitted job N' in: {done.stdout}{done.stderr}"
    return found.group(1)


def _cancel(job: str) -> None:
    """Training jobs are only submitted here: cancelled at once, so the cluster stays free."""
    subprocess.run(["scancel", job], capture_output=True)
    wait_final(job, 120)


def expectation(step: list[str], done: subprocess.CompletedProcess, site: dict, runs_before: set) -> None:
    """Asserts what the documentation says this kind of command does."""
    said = f"{shlex.join(step)}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n{done.stderr[-3000:]}"
    runs_now = set(os.listdir(site["cwd"] / "runs"))
    if step[0] == "sbatch":
        assert done.returncode == 0, said
        _cancel(re.search(r"Submitted batch job (\d+)", done.stdout).group(1))
        return
    if step[0] != "launch":
        assert done.returncode == 0, said
        return
    words = set(step)
    command = step[1] if len(step) > 1 and not step[1].startswith("-") and "=" not in step[1] else "train"
    if "--version" in words:
        assert done.returncode == 0 and re.fullmatch(r"launch \S+\n", done.stdout), said
    elif "--help" in words or "-h" in words:
        assert done.returncode == 0 and "example:" in done.stdout, said
    elif "--dry-run" in words:
        assert done.returncode == 0 and done.stdout.startswith("#!/bin/bash\n"), said
        assert runs_now == runs_before, "a dry run created a run directory"
    elif "--emit-sbatch" in words:
        assert done.returncode == 0, said
        assert (site["cwd"] / step[step.index("--emit-sbatch") + 1]).is_file(), said
    elif "--sweep" in words and command == "train":  # one job array for every point
        assert done.returncode == 0, said
        job = re.search(r"^submitted job array (\d+) \(--array=0-(\d+)", done.stdout, re.M)
        assert job, said
        site["sweep"] = re.search(r"^sweep dir: +(\S+)", done.stdout, re.M).group(1)
        subprocess.run(["scancel", job.group(1)], capture_output=True)
        wait_final(f"{job.group(1)}_0", 120)
    elif command == "runs" and "--sweep" in words:
        assert done.returncode == 0, said
        assert (Path(site["sweep"]) / "compare.csv").is_file(), said
    elif command == "runs":
        assert done.returncode == 0 and done.stdout.startswith("NAME "), said
        assert site["run"].name in done.stdout, said
    elif command == "cancel":
        assert done.returncode == 0, said
        assert "cancelled job" in done.stdout or "nothing to cancel" in done.stdout, said
    elif command == "gpucheck":
        # The local cluster's GPUs are stand-ins: each node reports NO GPU, and the exit code says so.
        assert done.returncode in (0, 1), said
        assert re.search(r"^gpucheck job \d+ on \d+ node\(s\).*: (OK|NO GPU|MISMATCH)", done.stdout, re.M), said
    elif command in ("eval", "predict", "convert"):
        assert done.returncode == 0, said
        job = _job(done)
        assert wait_final(job, 600) == "COMPLETED", f"job {job} did not complete\n{said}"
        if command == "eval":
            assert (site["run"] / "report" / "eval-val.json").is_file(), said
        elif command == "predict" and "--text" in words:  # a text run; --wait prints the job's CSV
            assert "text,predicted_class,confidence" in done.stdout, said
        elif command == "predict":
            out = site["cwd"] / step[step.index("--out") + 1]
            assert out.read_text().startswith("path,predicted_class,confidence"), said
        else:
            assert (site["cwd"] / step[3] / "labels.json").is_file(), said
    else:  # train or resume: a job is submitted, the run directory named
        assert done.returncode == 0, said
        _cancel(_job(done))


@pytest.mark.parametrize("line", LINES, ids=[f"{line.page}: {line.text}" for line in LINES])
def test_readme_command_does_what_the_readme_says(line: Line, site):
    why = next((reason for prefix, reason in SKIP.items() if line.text.startswith(prefix)), None)
    steps = [step for step in line.steps if not any(shlex.join(step).startswith(p) for p in SKIP)]
    if not steps:
        pytest.skip(why)
    for step in steps:
        step = substitute(step, site)
        before = set(os.listdir(site["cwd"] / "runs"))
        done = run_step(step, site["cwd"], site["env"])
        expectation(step, done, site, before)


def test_code_blocks_are_found_in_fences_and_indented_blocks():
    text = ("Intro:\n\n    launch --dry-run   # a comment\n    launch runs\n\n- a list\n  item\n\n"
            "```yaml\nlaunch: not a command\n```\n\n```bash\n$ python -m bench && launch runs\n```\n")
    lines = readme_lines(text)
    assert [line.text for line in lines] == ["launch --dry-run", "launch runs", "python -m bench && launch runs"]
    assert lines[2].steps == (("python", "-m", "bench"), ("launch", "runs"))

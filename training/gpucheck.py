"""Does TensorFlow see the GPUs SLURM gave this process? One line per process, then a verdict.

    python -m training.gpucheck [--expect-gpus N] [--run-dir R]

It checks this process, where it runs: hostname, GPUs TensorFlow sees (name, memory), the CUDA and
cuDNN this TensorFlow was built for, TF / tf-keras / Horovod versions, NCCL, and a verdict:
    OK        TensorFlow sees as many GPUs as expected.
    NO GPU    it sees none (when none were expected either, this is not an error).
    MISMATCH  it sees some, but not as many as expected.
Expected count, first that is set: --expect-gpus, SLURM_GPUS_ON_NODE, CUDA_VISIBLE_DEVICES, the
run's slurm.gpus_per_node (--run-dir). The exit code is 1 when the verdict is not OK and GPUs
were expected. With --run-dir each process also writes RUN_DIR/logs/gpucheck-<host>-<rank>.json.

To check every node of a new allocation, `launch gpucheck --nodes 2` (launcher/commands.py)
submits this module as a job, one task per node, and gives one verdict for all of them.
"""
from __future__ import annotations

import argparse
import ctypes.util
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from core.config import load_run_config
from core.fsutil import atomic_write_text
from core.gpucheck import PREFIX, VERDICTS, allocation_verdict, parse_verdict  # noqa: F401 (this module's API)
from core.rundir import RunDir

NO_DEVICE = ("", "-1", "NoDevFiles")  # CUDA_VISIBLE_DEVICES values that mean "no GPU"


def expected_gpus(environ: Mapping[str, str], flag: int | None = None,
                  configured: int | None = None) -> tuple[int | None, str]:
    """(expected GPU count, where it comes from); (None, "") when nothing says."""
    if flag is not None:
        return flag, "--expect-gpus"
    if (environ.get("SLURM_GPUS_ON_NODE") or "").isdigit():
        return int(environ["SLURM_GPUS_ON_NODE"]), "SLURM_GPUS_ON_NODE"
    if "CUDA_VISIBLE_DEVICES" in environ:
        devices = [d for d in environ["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() not in NO_DEVICE]
        return len(devices), "CUDA_VISIBLE_DEVICES"
    if configured:
        return configured, "slurm.gpus_per_node of the run"
    return None, ""


# Oldest Linux driver each CUDA major runs on (minor-version compatibility), from NVIDIA's
# CUDA compatibility table; a driver below it cannot run that CUDA at all.
MIN_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}


def _version_tuple(text: str | None) -> tuple[int, ...]:
    parts = []
    for piece in (text or "").split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)


def likely_cause(cuda_build: bool, cuda: str | None, wheels: Mapping[str, str],
                 driver_version: str | None, driver_gpus: int | None, seen: int) -> str:
    """Why TensorFlow sees fewer GPUs than the job got, as "; cause: what to do"; pure, for tests.

    `wheels` maps the nvidia-* pip distributions installed (e.g. nvidia-cudnn-cu12) to versions.
    """
    if not cuda_build:
        return "; this TensorFlow is a CPU-only build: install the gpu extra (pip install -e '.[gpu]')"
    if driver_gpus is None:
        return "; no NVIDIA driver here (nvidia-smi not found or failing): this node cannot use its GPUs"
    major = _version_tuple(cuda)[:1]
    need = MIN_DRIVER.get(major[0]) if major else None
    have = _version_tuple(driver_version)
    if need and have and have < need:
        return (f"; driver {driver_version} is older than CUDA {cuda} needs "
                f"(>= {'.'.join(map(str, need))}): use a node with a newer driver or ask the admins")
    suffix = f"-cu{major[0]}" if major else "-cu"
    if major and not any(name.startswith("nvidia-cudnn") and name.endswith(suffix) for name in wheels):
        return (f"; the CUDA {major[0]} libraries this TensorFlow needs are not installed (no "
                f"nvidia-*{suffix} wheels): install the gpu extra (pip install -e '.[gpu]')")
    if driver_gpus and driver_gpus != seen:
        return f"; the driver lists {driver_gpus}: CUDA/cuDNN libraries may not match this TensorFlow"
    return ""


def verdict(expected: int | None, source: str, seen: int, cause: str = "") -> tuple[str, str]:
    """(OK | NO GPU | MISMATCH, one-line explanation) from the counts; pure, for tests.

    `cause` (from `likely_cause`) is appended when TensorFlow sees fewer GPUs than expected.
    """
    if expected is None:
        if seen:
            return "OK", f"TensorFlow sees {seen} GPU(s); no count was expected"
        return "NO GPU", "no GPU expected and none seen: TensorFlow runs on the CPU"
    if seen == expected:
        return "OK", f"TensorFlow sees {seen} of {expected} expected GPU(s) ({source})"
    what = (f"{expected} GPU(s) allocated by SLURM on this node ({source})" if source.startswith("SLURM")
            else f"{expected} GPU(s) expected ({source})")
    return ("NO GPU" if seen == 0 else "MISMATCH"), f"{what} but TensorFlow sees {seen}{cause}"


def failed(word: str, expected: int | None) -> bool:
    """Exit non-zero? Any verdict but OK, except NO GPU when nothing was expected."""
    return word != "OK" and not (word == "NO GPU" and not expected)


def nvidia_smi(environ: Mapping[str, str]) -> list[dict[str, str]] | None:
    """GPUs the driver lists, restricted to CUDA_VISIBLE_DEVICES; None without a working driver."""
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,name,memory.total,driver_version",
                               "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    gpus = []
    for line in done.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5:
            gpus.append(dict(zip(("index", "uuid", "name", "memory_mib", "driver_version"), parts)))
    wanted = environ.get("CUDA_VISIBLE_DEVICES")
    if wanted is not None:
        keys = [w.strip() for w in wanted.split(",") if w.strip() not in NO_DEVICE]
        chosen = [g for k in keys for g in gpus if k in (g["index"], g["uuid"]) or g["uuid"].startswith(k)]
        # With cgroup-confined devices SLURM's indices are relative: keep the list when nothing matched.
        gpus = chosen or gpus
    return gpus


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _horovod() -> tuple[str, str | None]:
    """(what to print, Horovod's NCCL: "yes" / "no" / None when unknown)."""
    try:
        import horovod
    except ImportError:
        return "not installed", None
    try:
        import horovod.tensorflow as hvd
        nccl = "yes" if hvd.nccl_built() else "no"
    except Exception as err:  # a Horovod built against another TF fails here in many ways
        said = str(err).splitlines()[0][:80] if str(err) else type(err).__name__
        return f"{horovod.__version__} (broken: {said})", None
    return horovod.__version__, nccl


def cuda_wheels() -> dict[str, str]:
    """The NVIDIA library wheels installed beside TensorFlow (the gpu extra), name -> version."""
    found = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("nvidia-") and name.rsplit("-", 1)[-1].startswith("cu"):
            found[name] = dist.version
    return dict(sorted(found.items()))


def _wheel(wheels: Mapping[str, str], library: str) -> str | None:
    """'9.3.0.75' for library 'cudnn' from {'nvidia-cudnn-cu12': '9.3.0.75'}; None when absent."""
    return next((v for k, v in wheels.items() if k.startswith(f"nvidia-{library}-cu")), None)


def _tf_nccl(cuda_build: bool, wheels: Mapping[str, str]) -> str:
    if not cuda_build:
        return "n/a (CPU build)"
    if version := _wheel(wheels, "nccl"):
        return f"{version} (wheel)"
    return "system libnccl" if ctypes.util.find_library("nccl") else "not found"


def collect(environ: Mapping[str, str] | None = None, expect: int | None = None,
            configured: int | None = None) -> dict[str, Any]:
    """Everything the line reports, as a dict (this is what --run-dir writes as JSON)."""
    from training.keras_compat import keras, tf  # defers TensorFlow

    environ = os.environ if environ is None else environ
    build = dict(tf.sysconfig.get_build_info())
    cuda_build = bool(build.get("is_cuda_build"))
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        gpus.append({"name": details.get("device_name", device.name),
                     "compute_capability": ".".join(map(str, details.get("compute_capability", ()))) or None})
    driver = nvidia_smi(environ)
    for gpu, listed in zip(gpus, driver or []):  # the same order unless CUDA_DEVICE_ORDER differs
        gpu["memory_mib"] = int(listed["memory_mib"]) if listed["memory_mib"].isdigit() else None
    want, source = expected_gpus(environ, expect, configured)
    wheels = cuda_wheels()
    cuda = build.get("cuda_version") if cuda_build else None
    driver_version = driver[0]["driver_version"] if driver else None
    cause = likely_cause(cuda_build, cuda, wheels, driver_version, None if driver is None else len(driver),
                         len(gpus))
    word, why = verdict(want, source, len(gpus), cause)
    horovod, horovod_nccl = _horovod()
    return {
        "host": environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "rank": environ.get("SLURM_PROCID") or environ.get("LAUNCH_RANK") or "0",
        "python": sys.executable,  # which interpreter ran the check: in a container, the image's
        "gpus": gpus, "driver_gpus": driver, "driver_version": driver_version, "cuda": cuda,
        "cudnn": build.get("cudnn_version") if cuda_build else None, "cuda_wheels": wheels,
        "tensorflow": tf.__version__,
        "tf_keras": getattr(keras, "__version__", None) or _version("tf-keras"), "horovod": horovod,
        "horovod_nccl": horovod_nccl, "tf_nccl": _tf_nccl(cuda_build, wheels), "expected": want,
        "expected_from": source, "verdict": word, "why": why,
    }


def gpus_allocated(environ: Mapping[str, str]) -> bool:
    """SLURM gave this job step GPUs on this node (whatever the config asked)."""
    on_node = environ.get("SLURM_GPUS_ON_NODE") or ""
    return (on_node.isdigit() and int(on_node) > 0) or bool(environ.get("SLURM_STEP_GPUS")
                                                            or environ.get("SLURM_JOB_GPUS"))


def hide_gpus(gpus_per_node: int, environ: Mapping[str, str]) -> bool:
    """Whether a job should hide the node's GPUs from TensorFlow (CUDA_VISIBLE_DEVICES=""): it
    asked for none and SLURM gave none. It must not use GPUs another job was given, and
    TensorFlow then skips its failing cuInit. check_start then expects 0 GPUs, as it should."""
    return gpus_per_node == 0 and not gpus_allocated(environ)


class NoGPUError(RuntimeError):
    """The job was given GPUs but TensorFlow cannot use them: training would silently run on CPU."""


def check_start(allow_cpu: bool, environ: Mapping[str, str] | None = None) -> None:
    """At job start: refuse to train on the CPU when SLURM allocated GPUs that TensorFlow cannot see.

    `allow_cpu` (runtime.allow_cpu, or LAUNCH_ALLOW_CPU=1 in the environment) turns the refusal into
    a warning, for who really wants a CPU run on a GPU allocation (or a test cluster whose GPUs are
    stand-ins).
    """
    environ = os.environ if environ is None else environ
    want, _ = expected_gpus(environ)
    if not want:
        return
    from training.keras_compat import tf  # defers TensorFlow

    if len(tf.config.list_physical_devices("GPU")) >= want:
        return  # the usual case: no nvidia-smi, Horovod import or version probing at every start
    info = collect(environ)  # only to explain the shortfall
    message = f"gpucheck on {info['host']}: {info['why']}"
    if allow_cpu or environ.get("LAUNCH_ALLOW_CPU") == "1":
        if (environ.get("SLURM_LOCALID") or environ.get("LAUNCH_LOCAL_RANK") or "0") == "0":
            # One line per node: its other ranks see the same GPUs.
            print(f"[train] warning: {message}; training anyway (runtime.allow_cpu)", flush=True)
        return
    raise NoGPUError(f"{message}; set runtime.allow_cpu=true to train without them")


def _describe_gpus(gpus: list[dict]) -> str:
    if not gpus:
        return "0"
    names = []
    for gpu in gpus:
        memory = f", {gpu['memory_mib']} MiB" if gpu.get("memory_mib") else ""
        cc = f", cc {gpu['compute_capability']}" if gpu.get("compute_capability") else ""
        names.append(f"{gpu['name']}{memory}{cc}")
    if len(set(names)) == 1:
        return f"{len(gpus)} x {names[0]}"
    return f"{len(gpus)}: " + "; ".join(names)


def format_line(info: dict[str, Any]) -> str:
    """The one report line of a process."""
    nccl = f"tf {info['tf_nccl']}" + (f", horovod {info['horovod_nccl']}" if info["horovod_nccl"] else "")
    build = f"CUDA {info['cuda']} cuDNN {info['cudnn']}" if info["cuda"] else "CPU-only build"
    wheels = info.get("cuda_wheels") or {}
    libs = ", ".join(f"{lib} {_wheel(wheels, lib)}" for lib in ("cuda-runtime", "cudnn", "cublas")
                     if _wheel(wheels, lib))
    return " | ".join([
        f"{PREFIX} {info['host']} rank {info['rank']}", f"GPUs {_describe_gpus(info['gpus'])}",
        f"driver {info.get('driver_version') or 'none'}", f"built for {build}",
        f"wheels {libs or 'none'}", f"tf {info['tensorflow']}", f"tf-keras {info['tf_keras']}",
        f"horovod {info['horovod']}", f"nccl {nccl}", f"verdict {info['verdict']}: {info['why']}",
    ])


def _run_config(run_dir: Path | None):
    return None if run_dir is None else load_run_config(run_dir)


def check_here(args: argparse.Namespace) -> int:
    cfg = _run_config(args.run_dir)
    info = collect(expect=args.expect_gpus, configured=cfg.slurm.gpus_per_node if cfg else None)
    print(format_line(info), flush=True)
    if args.run_dir is not None:
        path = RunDir(args.run_dir).logs / f"gpucheck-{info['host']}-{info['rank']}.json"
        atomic_write_text(path, json.dumps(info, indent=1) + "\n")
    return 1 if failed(info["verdict"], info["expected"]) else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.gpucheck", description=__doc__.splitlines()[0])
    parser.add_argument("--expect-gpus", type=int, default=None, help="GPUs this process should see")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="take the expected count from this run; write the JSON report to its logs/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return check_here(args)
    except ValueError as err:  # ConfigError, EvaluateError: one line for the user
        print(f"gpucheck: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The run directory mirrored to object storage (`storage.mirror`), by the chief only.

A background thread watches the checkpoint pointer (`checkpoints/latest.json`) and, after each
checkpoint, uploads what changed: every file first, each as one object, then the pointer last,
so a run resumed from the mirror always finds the checkpoint its pointer names. At the end the
whole directory is uploaded once more and the run's entry joins the results index.

Uploads retry with backoff and never stop training: what could not be uploaded is listed in
`mirror.json` in the run directory (and said in the job's log), and a later sync tries again.

Results index: one object per run (`index/<run>.json`), merged on read into `runs.json` at the
mirror's root; a run rewrites `runs.json` from all entries, so concurrent runs lose nothing: the
per-run objects are the record, `runs.json` their latest merge.
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from core import rundir, storage
from core.fsutil import atomic_write_text

POLL_S = 5.0
RETRIES = 4  # per file and sync; waits 1, 2, 4, 8 s between tries
MERGE_TRIES = 5  # rewrites of runs.json while other runs keep adding entries
STATE = "mirror.json"  # in the run directory: where the mirror is, what is not uploaded yet
INDEX, RUNS_JSON = storage.INDEX, storage.RUNS_JSON
# Never mirrored: locks and files being written under a temporary name.
SKIP_NAMES = (rundir.WRITER_LOCK, rundir.LAUNCH_LOCK, STATE)


def mirror_name(run_dir: Path) -> str:
    """The run's path under the mirror: its folder name, under its sweep's name for a sweep's
    point (points are named by their values, NNN-lr0.01, and repeat across sweeps)."""
    return f"{run_dir.parent.name}/{run_dir.name}" if rundir.is_sweep_dir(run_dir.parent) else run_dir.name


def run_url(mirror: str, run_dir: Path) -> str:
    return storage.join(mirror, mirror_name(run_dir))


def _skipped(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return name in SKIP_NAMES or ".tmp" in name or name.endswith(".part") or "workertemp" in rel


class Mirror:
    """Context manager: watches and uploads while training runs; a final sync on exit."""

    def __init__(self, run_dir: Path, mirror: str, endpoint_url: str = "", log=print, poll_s: float = POLL_S):
        self.run_dir = run_dir
        self.url = run_url(mirror, run_dir)
        self.mirror = mirror
        self.endpoint_url = endpoint_url
        self.log = log
        self.poll_s = poll_s
        self.uploaded: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) sent
        self.pending: list[str] = []
        self.error = ""
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one sync at a time
        self._thread = threading.Thread(target=self._watch, name="mirror", daemon=True)

    def __enter__(self) -> "Mirror":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()
        if self.pending:
            self.log(f"mirror: {len(self.pending)} files not uploaded to {self.url} ({self.error}); "
                     f"listed in {self.run_dir / STATE}, and the next run of this job retries them")
        else:
            self.log(f"mirror: {self.run_dir} is mirrored at {self.url}")

    def _pointer(self) -> Path:
        return self.run_dir / rundir.CHECKPOINTS / rundir.LATEST

    def _watch(self) -> None:
        seen = None
        while not self._stop.wait(self.poll_s):
            try:
                stamp = self._pointer().stat().st_mtime_ns
            except OSError:
                continue
            if stamp != seen:
                seen = stamp
                self.sync()

    def sync(self) -> list[str]:
        """Uploads what changed since the last sync, the checkpoint pointer last; returns what
        is still pending. Never raises."""
        with self._lock:
            pointer = self._pointer()
            try:
                pointer_bytes = pointer.read_bytes()  # before the walk: it names a file that exists now
            except OSError:
                pointer_bytes = None
            pointer_rel = pointer.relative_to(self.run_dir).as_posix()
            failed = []
            for path in sorted(p for p in self.run_dir.rglob("*") if p.is_file()):
                rel = path.relative_to(self.run_dir).as_posix()
                if rel == pointer_rel or _skipped(rel):
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    continue  # removed meanwhile (an old checkpoint pruned)
                if self.uploaded.get(rel) == (stat.st_size, stat.st_mtime_ns):
                    continue
                if self._retry(lambda: storage.upload(str(path), storage.join(self.url, rel), self.endpoint_url)):
                    self.uploaded[rel] = (stat.st_size, stat.st_mtime_ns)
                elif path.exists():
                    failed.append(rel)
            if pointer_bytes is not None:
                target = json.loads(pointer_bytes).get("weights", "")
                ready = not target or f"{rundir.CHECKPOINTS}/{target}" in self.uploaded
                if not (ready and self._retry(lambda: storage.write_bytes(
                        storage.join(self.url, pointer_rel), pointer_bytes, self.endpoint_url))):
                    failed.append(pointer_rel)
            self.pending = failed
            self._write_state()
            return failed

    def _retry(self, upload) -> bool:
        for attempt in range(RETRIES + 1):
            try:
                upload()
                return True
            except Exception as err:  # a mirror problem must never end the training
                self.error = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
                if attempt < RETRIES and not self._stop.is_set():
                    time.sleep(2 ** attempt)
        return False

    def _write_state(self) -> None:
        state = {"url": self.url, "pending": self.pending, "error": self.error if self.pending else "",
                 "synced_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        atomic_write_text(self.run_dir / STATE, json.dumps(state, indent=1))

    def publish(self, entry: dict) -> None:
        """Adds this run's entry to the results index at the mirror's root. Never raises."""
        name = mirror_name(self.run_dir).replace("/", "--")
        body = json.dumps(entry, indent=1, sort_keys=True).encode()
        if not self._retry(lambda: storage.write_bytes(storage.join(self.mirror, INDEX, f"{name}.json"),
                                                       body, self.endpoint_url)):
            self.log(f"mirror: the results index entry of {name} was not written ({self.error})")
            return
        try:
            self._merge_runs_json()
        except Exception as err:  # the per-run entry is the record; runs.json is rebuilt by the next run
            self.log(f"mirror: {RUNS_JSON} not rewritten ({type(err).__name__}: {err}); the index "
                     f"entry {INDEX}/{name}.json is in place")

    def _merge_runs_json(self) -> None:
        """Rewrites runs.json from every index entry until a listing after the write shows no entry
        it lacks. Two runs finishing together then both end in it: whichever wrote last had listed
        after the other's entry was in place (an object store is consistent on read after write)."""
        written = None
        for _ in range(MERGE_TRIES):
            merged = storage.read_index(self.mirror, self.endpoint_url)
            if merged == written:
                return
            storage.write_bytes(storage.join(self.mirror, RUNS_JSON),
                                json.dumps(merged, indent=1, sort_keys=True).encode(), self.endpoint_url)
            written = merged


def index_entry(run_dir: Path, url: str) -> dict:
    """The run's line in the results index: its summary's fields, its state and where it is."""
    entry = {}
    for rel in (f"{rundir.REPORT}/summary.json", rundir.STATUS):
        try:
            entry.update(json.loads((run_dir / rel).read_text()))
        except (OSError, ValueError):
            pass
    entry.update(run=mirror_name(run_dir), url=url)
    return entry


@contextlib.contextmanager
def mirrored(storage_cfg, run_dir: Path, is_chief: bool, log=print):
    """Mirrors `run_dir` while the block runs when storage.mirror is set, on the chief only
    (only the chief writes the run directory); then the final sync and the index entry."""
    if not (storage_cfg.mirror and is_chief):
        yield None
        return
    mirror = Mirror(run_dir, storage_cfg.mirror, storage_cfg.endpoint_url, log=log)
    with mirror:
        yield mirror
    mirror.publish(index_entry(run_dir, mirror.url))

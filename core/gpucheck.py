"""The gpucheck report line's verdict, read on both sides: every process of a gpucheck job
prints one line (training/gpucheck.py), and `launch gpucheck` sums the nodes' lines up into one
verdict for the allocation (launcher/commands.py)."""
from __future__ import annotations

PREFIX = "gpucheck"  # every report line starts with this, so it can be found in a job log
VERDICTS = ("OK", "NO GPU", "MISMATCH")


def parse_verdict(line: str) -> str | None:
    """The verdict word of a report line, or None if the line is not one."""
    if not line.startswith(PREFIX + " ") or " | verdict " not in line:
        return None
    rest = line.rsplit(" | verdict ", 1)[1]
    return next((word for word in VERDICTS if rest.startswith(word + ":")), None)


def allocation_verdict(lines: list[str], nodes: int) -> tuple[str, bool]:
    """One verdict for the whole allocation from the nodes' lines; (text, ok)."""
    words = [parse_verdict(line) for line in lines]
    bad = {w: words.count(w) for w in VERDICTS[1:] if w in words}
    detail = f" ({', '.join(f'{n} {w}' for w, n in bad.items())})" if len(bad) > 1 else ""
    if len(lines) < nodes:
        return f"MISSING: {len(lines)} of {nodes} node(s) reported{detail}; see the job log", False
    if not bad:
        return f"OK on all {len(lines)} node(s)", True
    worst = "NO GPU" if "NO GPU" in bad else "MISMATCH"
    return f"{worst} on {sum(bad.values())} of {len(lines)} node(s){detail}", False

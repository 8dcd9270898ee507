"""Alias kept for batch scripts written before the status writer moved to core/runstatus.py:
a job queued or requeued from such a script still runs `python -m launcher.runstatus settle`."""
from core.runstatus import main

if __name__ == "__main__":
    raise SystemExit(main())

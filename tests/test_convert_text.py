"""The text converter: what is kept, what is skipped and listed, and what a user is told."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.data import DataError
from training.data.convert_text import convert_text, main


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def read_shards(out: Path, split: str) -> list[tuple[str, int, str]]:
    from training.keras_compat import tf

    spec = {"text": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
            "label/text": tf.io.FixedLenFeature([], tf.string)}
    rows = []
    for path in sorted(out.glob(f"{split}-*")):
        for record in tf.data.TFRecordDataset(str(path)):
            ex = tf.io.parse_single_example(record, spec)
            rows.append((ex["text"].numpy().decode(), int(ex["label"]), ex["label/text"].numpy().decode()))
    return sorted(rows)


@pytest.fixture
def review_tree(tmp_path: Path) -> Path:
    """The large movie-review layout, with the hostile files a real copy holds."""
    src = tmp_path / "my reviews; 'quoted'"
    put(src / "train/pos/0_9.txt", b"A wonderful film.")
    put(src / "train/pos/1_8.TXT", b"Loved every minute")  # upper-case suffix
    put(src / "train/pos/2_10.txt", b"\xef\xbb\xbfGreat acting")  # byte-order mark
    put(src / "train/pos/3_7.txt", b"   \n")  # empty
    put(src / "train/pos/4_9.txt", b"caf\xe9 scene was fine")  # Latin-1, not UTF-8
    put(src / "train/pos/.DS_Store", b"\x00\x01")
    put(src / "train/neg/5_1.txt", b"Dull, overlong.")
    put(src / "train/neg/6_2.txt", "Tedious – a mess".encode())
    put(src / "train/neg/notes.md", b"not a review")
    put(src / "train/unsup/7_0.txt", b"no label here")
    put(src / "train/urls_pos.txt", b"http://example.com")
    put(src / "test/pos/8_9.txt", b"Brilliant")
    put(src / "test/neg/9_2.txt", b"Awful")
    put(src / "test/other/10_5.txt", b"Which class?")
    return src


def test_folder_tree_keeps_texts_and_lists_every_skipped_file(review_tree, tmp_path, monkeypatch):
    from training.data import text_sources

    monkeypatch.setattr(text_sources, "PARALLEL_MIN_FILES", 2)  # read by worker processes, as a large tree is
    out = tmp_path / "shards"
    summary = convert_text(review_tree, out, workers=2, log=lambda _: None)
    assert summary.classes == ["neg", "pos"]  # unsup/ is not a class
    assert summary.counts == {"train": 5, "test": 2}
    assert read_shards(out, "train") == [("A wonderful film.", 1, "pos"), ("Dull, overlong.", 0, "neg"),
                                         ("Great acting", 1, "pos"), ("Loved every minute", 1, "pos"),
                                         ("Tedious – a mess", 0, "neg")]
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    assert {Path(p).name: reason for p, reason in skipped.items()} == {
        "3_7.txt": "empty text", "4_9.txt": "not UTF-8", "notes.md": "not a .txt file",
        "urls_pos.txt": "not inside a class folder", "10_5.txt": "unknown label 'other'"}
    labels = json.loads((out / "labels.json").read_text())
    assert labels["counts"] == {"train": 5, "test": 2} and labels["skipped"] == 5
    assert {n: e["records"] for n, e in labels["shards"].items()} == {
        **{f"train-{i:05d}-of-00005": 1 for i in range(5)}, "test-00000-of-00002": 1, "test-00001-of-00002": 1}


CSV = ('\ufefftext,label,id\n'
       '"Good, really good",pos,1\n'
       '"Two lines\nof praise",pos,2\n'
       'Fine film,pos,3\n'
       'Bad,neg,4\n'
       '"Worse, much worse",neg,5\n'
       'Awful,neg,6\n'
       ',pos,7\n'
       'Meh,neutral,8\n').encode() + b'caf\xe9,neg,9\n'


def test_csv_with_quoted_commas_newlines_bom_and_unknown_label(tmp_path):
    put(tmp_path / "reviews.csv", CSV)
    out = tmp_path / "shards"
    summary = convert_text(tmp_path / "reviews.csv", out, classes=["neg", "pos"], val_fraction=0.34,
                           workers=1, log=lambda _: None)
    assert summary.counts == {"train": 4, "validation": 2}  # a third of each class held out
    texts = {t for t, _, _ in read_shards(out, "train") + read_shards(out, "validation")}
    assert texts == {"Good, really good", "Two lines\nof praise", "Fine film", "Bad", "Worse, much worse", "Awful"}
    reasons = sorted(line.split("\t")[1] for line in (out / "skipped.txt").read_text().splitlines())
    assert reasons == ["empty text", "not UTF-8", "unknown label 'neutral'"]


def test_jsonl_with_other_column_names(tmp_path):
    lines = [{"review": f"text {i}", "stars": "5" if i % 2 else "1"} for i in range(10)]
    put(tmp_path / "r.jsonl", "\n".join(json.dumps(r) for r in lines).encode() + b"\n{broken\n")
    summary = convert_text(tmp_path / "r.jsonl", tmp_path / "out", text_column="review", label_column="stars",
                           val_fraction=0.2, log=lambda _: None)
    assert summary.classes == ["1", "5"] and summary.counts == {"train": 8, "validation": 2}
    assert [reason for _, reason in summary.skipped] == ["not valid JSON"]


def test_bad_sources_are_one_line_errors(tmp_path, capsys):
    put(tmp_path / "a.csv", b"body,label\nx,pos\n")
    assert main([str(tmp_path / "a.csv"), str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no column 'text' (its columns: body, label); set data.text_column" in err and "\n" not in err
    put(tmp_path / "one.csv", b"text,label\nx,pos\ny,pos\n")
    with pytest.raises(DataError, match="1 class.*two or more"):
        convert_text(tmp_path / "one.csv", tmp_path / "o2", log=lambda _: None)
    assert not (tmp_path / "o2" / "labels.json").exists()

"""Every input left out is counted in the log and listed in skipped.txt: by the text converter, by
a run that reads its texts directly (folder, csv, jsonl), and by the image converter, in one
process or as array tasks."""
from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from core import rundir
from core.config import Config, DataConfig, ModelConfig, TextConfig

PNG = b"\x89PNG\r\n\x1a\n"


def png_bytes(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 90, 30)).save(buf, "PNG")
    return buf.getvalue()


def broken_jsonl(path: Path) -> Path:
    """40 good reviews a class, one line in the middle cut short (an interrupted export)."""
    lines = [json.dumps({"text": f"{word} film number {i}", "label": label})
             for i in range(40) for word, label in (("great", "pos"), ("awful", "neg"))]
    lines.insert(40, '{"text": "half a rec')
    path.write_text("\n".join(lines) + "\n")
    return path


def text_tree_with_binaries(src: Path) -> Path:
    """40 reviews a class, 200 binary files named .txt, 4 PNGs among the texts and a dev/ split."""
    for label, word in (("pos", "great"), ("neg", "awful")):
        folder = src / "train" / label
        folder.mkdir(parents=True)
        for i in range(40):
            (folder / f"{i}.txt").write_text(f"{word} film number {i}")
        for i in range(100):
            # Half are not UTF-8; the other half are, NUL bytes and all (a binary's low bytes, UTF-16).
            data = bytes(range(256)) if i % 2 else f"{word} {i}".encode("utf-16-le")
            (folder / f"blob{i}.txt").write_bytes(data)
        for i in range(2):
            (folder / f"cover{i}.png").write_bytes(png_bytes(i))
    (src / "dev" / "pos").mkdir(parents=True)
    (src / "dev" / "pos" / "0.txt").write_text("a dev split nobody reads")
    (src / "README").write_text("notes beside the splits are not data\n")
    return src


def reasons(listing: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in listing.read_text().splitlines():
        _, reason = line.split("\t")
        counts[reason] = counts.get(reason, 0) + 1
    return counts


TREE_REASONS = {"holds NUL bytes (binary, or UTF-16)": 100, "not UTF-8": 100, "not a .txt file": 4,
                "not a split folder (train, val, validation, test)": 1}  # as the log line orders them


# --- the text converter ----------------------------------------------------------------------------

def test_text_converter_logs_the_count_of_a_broken_jsonl_line(tmp_path):
    from training.data.convert_text import convert_text

    lines = []
    summary = convert_text(broken_jsonl(tmp_path / "reviews.jsonl"), tmp_path / "out", log=lines.append)
    assert sum(summary.counts.values()) == 80
    listed = (tmp_path / "out" / rundir.SKIPPED).read_text()
    assert listed == f"{tmp_path / 'reviews.jsonl'}:41\tnot valid JSON\n"
    assert f"skipped 1 (1 not valid JSON), listed in {tmp_path / 'out' / rundir.SKIPPED}" in lines


def test_jsonl_records_holding_line_separators_are_kept_and_line_numbers_stay_right(tmp_path):
    from training.data.text_sources import read_text_source

    path = broken_jsonl(tmp_path / "reviews.jsonl")
    lines = path.read_text().split("\n")
    # Raw U+2028 and U+0085 inside JSON strings (scraped text holds them); CRLF line ends as well.
    lines[0] = json.dumps({"text": "great\u2028film\x85again", "label": "pos"}, ensure_ascii=False)
    path.write_text("\r\n".join(lines))
    texts = read_text_source(path)
    assert sum(len(rows) for rows in texts.splits.values()) == 80
    assert texts.skipped == [(f"{path}:41", "not valid JSON")]


def test_text_converter_lists_binaries_pngs_and_an_unread_split_folder(tmp_path):
    from training.data.convert_text import convert_text

    lines = []
    summary = convert_text(text_tree_with_binaries(tmp_path / "src"), tmp_path / "out", log=lines.append)
    assert sum(summary.counts.values()) == 80
    assert reasons(tmp_path / "out" / rundir.SKIPPED) == TREE_REASONS
    assert json.loads((tmp_path / "out" / "labels.json").read_text())["skipped"] == 205
    assert (f"skipped 205 (100 holds NUL bytes, 100 not UTF-8, 4 not a .txt file, 1 not a split folder), "
            f"listed in {tmp_path / 'out' / rundir.SKIPPED}") in lines


# --- a run reading its texts directly ---------------------------------------------------------------

def prepare_text_run(run_dir: Path, data: DataConfig, is_chief: bool = True) -> None:
    """What the trainer does with the data before the first step: TextTask.prepare."""
    from training.tasks.text import TextTask

    cfg = Config(task="text", data=data, model=ModelConfig(name="bag_of_embeddings"),
                 text=TextConfig(max_tokens=100, sequence_length=8))
    run_dir.mkdir(exist_ok=True)
    info = TextTask(cfg).prepare(run_dir, SimpleNamespace(is_chief=is_chief))
    assert info.train_examples + info.val_examples == 80  # trained on what was left


@pytest.mark.parametrize("source", ["jsonl", "folder"])
def test_a_run_reading_texts_directly_logs_and_lists_what_it_left_out(tmp_path, capsys, source):
    if source == "jsonl":
        data_dir, expected = broken_jsonl(tmp_path / "reviews.jsonl"), {"not valid JSON": 1}
    else:
        data_dir, expected = text_tree_with_binaries(tmp_path / "src"), TREE_REASONS
    run_dir = tmp_path / "run"
    prepare_text_run(run_dir, DataConfig(source=source, data_dir=str(data_dir), batch_size=8))
    listing = rundir.RunDir(run_dir).skipped
    assert reasons(listing) == expected
    said = [line for line in capsys.readouterr().out.splitlines() if "skipped" in line]
    assert said == [f"[train] {data_dir}: skipped {sum(expected.values())} ("
                    + ", ".join(f"{n} {r.split(' (')[0]}" for r, n in expected.items())
                    + f"), listed in {listing}"]


def test_only_the_chief_writes_the_runs_skipped_list(tmp_path, capsys):
    run_dir = tmp_path / "run"
    data = DataConfig(source="jsonl", data_dir=str(broken_jsonl(tmp_path / "r.jsonl")), batch_size=8)
    prepare_text_run(run_dir, data)  # the chief adapts the tokenizer the worker then reads
    rundir.RunDir(run_dir).skipped.unlink()
    capsys.readouterr()
    prepare_text_run(run_dir, data, is_chief=False)
    assert not rundir.RunDir(run_dir).skipped.exists() and "skipped" not in capsys.readouterr().out


# --- the image converter ---------------------------------------------------------------------------

def photo_tree_with_strays(src: Path) -> Path:
    for split, count in (("train", 3), ("val", 1)):
        for label in ("cat", "dog"):
            folder = src / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{i}.png").write_bytes(png_bytes(40 * i + (label == "dog") * 100))
    (src / "train" / "cat" / "notes.txt").write_text("not an image")
    (src / "train" / "dog" / "cut.png").write_bytes(png_bytes(7)[:50])  # IDAT cut short
    (src / "train" / "list.csv").write_text("outside every class folder")
    (src / "extra" / "cat").mkdir(parents=True)
    (src / "extra" / "cat" / "0.png").write_bytes(png_bytes(9))
    return src


IMAGE_REASONS = ("skipped 4 (1 not a readable image, 1 not a split folder, 1 not an image Pillow can read, "
                 "1 not inside a class folder), listed in ")


def test_image_converter_logs_the_count_and_lists_every_file(tmp_path):
    from training.data.convert import convert

    lines = []
    summary = convert(photo_tree_with_strays(tmp_path / "src"), tmp_path / "out", workers=1, log=lines.append)
    assert summary.counts == {"train": 6, "validation": 2}
    listed = [line.split("\t") for line in (tmp_path / "out" / rundir.SKIPPED).read_text().splitlines()]
    assert sorted(Path(p).relative_to(tmp_path / "src").as_posix() for p, _ in listed) == [
        "extra", "train/cat/notes.txt", "train/dog/cut.png", "train/list.csv"]
    assert IMAGE_REASONS + str(tmp_path / "out" / rundir.SKIPPED) in lines


def test_array_tasks_log_their_share_and_the_last_one_the_total(tmp_path):
    from training.data.convert import convert

    src, out = photo_tree_with_strays(tmp_path / "src"), tmp_path / "arr"
    first, last = [], []
    convert(src, out, {"train": 2, "validation": 1}, workers=1, log=first.append, part=(0, 2))
    convert(src, out, {"train": 2, "validation": 1}, workers=1, log=last.append, part=(1, 2))
    listing = out / rundir.SKIPPED
    assert any(line.startswith("this task: skipped ") and line.endswith(f"{listing} once every task has written")
               for line in first)
    assert IMAGE_REASONS + str(listing) in last
    assert len(listing.read_text().splitlines()) == 4

import json
import shutil

import pyarrow.parquet as pq
import pytest

from utils.cli.main import main
from utils.data.lume import find_split_files, load_lume, parse_item_id
from utils.errors import UserError

EXPECTED_VALIDATION = {  # docs/benchmark.md, "Data layout": (split, task) -> (sc, qa)
    ("forget", "Task1"): (24, 24), ("forget", "Task2"): (23, 115), ("forget", "Task3"): (34, 34),
    ("retain", "Task1"): (27, 27), ("retain", "Task2"): (25, 125), ("retain", "Task3"): (37, 37),
}


def counts(data):
    out = {}
    for split in ("forget", "retain"):
        for item in data.split_items(split):
            sc, qa = out.get((split, item.task), (0, 0))
            out[(split, item.task)] = (sc + (item.kind == "sc"), qa + (item.kind == "qa"))
    return out


def test_real_validation_parquet(real_data_dir):
    data = load_lume(real_data_dir, "validation")
    assert len(data.forget) == 254 and len(data.retain) == 278
    assert counts(data) == EXPECTED_VALIDATION
    first = data.forget[0]
    assert first.id.startswith('"') and first.kind == "sc" and first.document_id.endswith('"')


def write_jsonl_layout(real_data_dir, target, suffix="jsonl"):
    target.mkdir(parents=True, exist_ok=True)
    for split in ("forget", "retain"):
        rows = pq.read_table(real_data_dir / "data" / f"{split}_validation-00000-of-00001.parquet").to_pylist()
        if suffix == "jsonl":
            (target / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            pq.write_table(pq.read_table(real_data_dir / "data" / f"{split}_validation-00000-of-00001.parquet"),
                           target / f"{split}.parquet")
    return target


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_final_evaluation_layout(real_data_dir, tmp_path, suffix):
    folder = write_jsonl_layout(real_data_dir, tmp_path / "handout", suffix)
    data = load_lume(folder, "validation")
    assert counts(data) == EXPECTED_VALIDATION


def test_cli_prints_counts(real_data_dir, capsys):
    assert main(["data", str(real_data_dir)]) == 0
    out = capsys.readouterr().out
    assert "254" in out and "278" in out and "34 members" in out


def test_item_ids():
    assert parse_item_id('"8f24c511-a319"sc1') == ("sc", 1, '"8f24c511-a319"')
    assert parse_item_id("12762334qa0") == ("qa", 0, "12762334")
    with pytest.raises(ValueError):
        parse_item_id("12762334xx0")


def broken_copy(real_data_dir, tmp_path, mutate):
    folder = write_jsonl_layout(real_data_dir, tmp_path / "broken")
    path = folder / "forget.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows = mutate(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def expect_rejection(capsys, folder, pattern):
    assert main(["data", str(folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert pattern in err, err


def test_rejects_missing_file(real_data_dir, tmp_path, capsys):
    folder = write_jsonl_layout(real_data_dir, tmp_path / "x")
    (folder / "retain.jsonl").unlink()
    expect_rejection(capsys, folder, "retain.jsonl")


def test_rejects_unknown_layout(tmp_path, capsys):
    expect_rejection(capsys, tmp_path, "no LUME data found")


def test_rejects_missing_column(real_data_dir, tmp_path, capsys):
    def drop_output(rows):
        del rows[5]["output"]
        return rows
    expect_rejection(capsys, broken_copy(real_data_dir, tmp_path, drop_output), "row 6 lacks column(s) output")


def test_rejects_unknown_task(real_data_dir, tmp_path, capsys):
    def bad_task(rows):
        rows[2]["task"] = "Task4"
        return rows
    expect_rejection(capsys, broken_copy(real_data_dir, tmp_path, bad_task), "row 3 has unknown task 'Task4'")


def test_rejects_malformed_id(real_data_dir, tmp_path, capsys):
    def bad_id(rows):
        rows[0]["id"] = "not-an-item-id"
        return rows
    expect_rejection(capsys, broken_copy(real_data_dir, tmp_path, bad_id), "row 1: id 'not-an-item-id'")


def test_rejects_empty_split(real_data_dir, tmp_path, capsys):
    expect_rejection(capsys, broken_copy(real_data_dir, tmp_path, lambda rows: []), "forget split is empty")


def test_rejects_malformed_json(real_data_dir, tmp_path, capsys):
    folder = write_jsonl_layout(real_data_dir, tmp_path / "x")
    with (folder / "forget.jsonl").open("a") as handle:
        handle.write("{not json\n")
    expect_rejection(capsys, folder, "is not valid JSON")


def test_hf_layout_copy_reads(real_data_dir, tmp_path):
    shutil.copytree(real_data_dir / "data", tmp_path / "data")
    assert len(load_lume(tmp_path).forget) == 254


def test_jsonl_lines_keep_their_numbers_and_a_bad_byte_its_file_offset(tmp_path):
    from utils.errors import UserError
    from utils.io import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\n{"b": "\xe2\x80\xa8 inside"}\n')
    assert read_jsonl(path) == [(1, {"a": 1}), (3, {"b": "\u2028 inside"})]
    path.write_bytes(b'{"a": 1}\n{"b": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"rows.jsonl: not UTF-8 text \(byte 0xe9 at byte offset 19\)"):
        read_jsonl(path)


def test_pad_batch_pads_right_or_left_with_a_matching_mask():
    from utils.data.tokenization import length_sorted_batches, pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=-1, side="left")
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert str(ids.dtype) == str(mask.dtype) == "torch.int64"
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")
    # Longest first, ties in their original order.
    assert length_sorted_batches([2, 5, 2, 7, 1], 2) == [[3, 1], [0, 2], [4]]


def test_an_mia_folder_is_incomplete_only_with_one_file_of_two(tmp_path):
    from utils.data.lume import incomplete_mia_folder

    folder = tmp_path / "mia_data" / "validation"
    folder.mkdir(parents=True)
    assert incomplete_mia_folder(tmp_path) is None  # no MIA files at all: nothing was meant to be measured
    (folder / "nonmember.jsonl").write_text('{"document": "x y"}\n')
    assert incomplete_mia_folder(tmp_path) == f"MIA not measured: {folder} has nonmember.jsonl but no member.jsonl"
    (folder / "member.jsonl").write_text('{"document": "x y"}\n')
    assert incomplete_mia_folder(tmp_path) is None


def test_the_official_parquet_files_read_through_datasets_give_the_rows_pyarrow_reads(real_data_dir, tmp_path):
    from utils.data.lume import read_parquet_rows

    files = find_split_files(real_data_dir, "validation")
    for path in files.values():
        rows = read_parquet_rows(path)
        assert rows == pq.read_table(path).to_pylist() and len(rows) > 100
    # Nothing is left in a datasets cache, and a damaged file is one line naming it.
    broken = tmp_path / "forget_validation-00000-of-00001.parquet"
    broken.write_bytes(files["forget"].read_bytes()[:500])
    with pytest.raises(UserError, match=r"not a readable parquet file"):
        read_parquet_rows(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == [broken.name]

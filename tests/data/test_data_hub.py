"""The official files from the hub: `unlearn data download` and `data.path: hf:ORG/NAME`, exercised with the
hub client replaced by a copy of the shared validation files (no network here), and offline for real."""

from __future__ import annotations

import shutil

import pytest

from utils.cli.main import main


@pytest.fixture()
def fake_hub(real_data_dir, monkeypatch):
    """snapshot_download that copies the shared validation folder, recording what it was asked for."""
    calls = []

    def snapshot_download(repo_id, repo_type, revision, local_dir, allow_patterns):
        calls.append((repo_id, repo_type, revision))
        shutil.copytree(real_data_dir, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    return calls


def test_download_fetches_the_files_into_a_new_folder_and_never_over_one(fake_hub, tmp_path, capsys):
    to = tmp_path / "lume"
    assert main(["data", "download", "--to", str(to)]) == 0
    assert fake_hub == [("llmunlearningsemeval2025organization/semeval25-unlearning-dataset-public", "dataset", None)]
    assert "splits validation" in capsys.readouterr().out
    assert main(["data", str(to), "--split", "validation"]) == 0
    assert "254" in capsys.readouterr().out  # the forget rows of the validation split
    # A folder that holds anything is never downloaded into.
    before = sorted(p.relative_to(to) for p in to.rglob("*"))
    assert main(["data", "download", "--to", str(to), "--repo", "someone/else"]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert sorted(p.relative_to(to) for p in to.rglob("*")) == before and len(fake_hub) == 1


def test_a_hub_id_as_data_path_is_downloaded_once_into_the_cache(fake_hub, tmp_path, monkeypatch):
    from utils.data.lume import find_mia_dir, load_lume

    monkeypatch.setenv("LUME_DATA_CACHE", str(tmp_path / "cache"))
    data = load_lume("hf:org/lume@v1", "validation")
    assert len(data.forget) == 254 and fake_hub == [("org/lume", "dataset", "v1")]
    assert find_mia_dir("hf:org/lume@v1", "validation") is not None
    load_lume("hf:org/lume@v1", "validation")
    assert len(fake_hub) == 1  # read from the cache the second time
    assert (tmp_path / "cache" / "org--lume@v1").is_dir()


def test_offline_or_a_bad_id_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LUME_DATA_CACHE", str(tmp_path / "cache"))
    assert main(["data", "download", "--to", str(tmp_path / "lume")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot download dataset") and len(err.splitlines()) == 1
    assert not (tmp_path / "lume").exists()
    assert main(["data", "hf:not-a-repo"]) == 2
    assert "hf:ORGANISATION/NAME" in capsys.readouterr().err

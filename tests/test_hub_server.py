"""The Hub stand-in in hub_server.py works with the real huggingface_hub client."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from hub_server import HubServer, commit_sha, point_client_at

REPO = "acme/tiny"
SMALL = b'{"hidden_size": 32}\n'
BIG = os.urandom(3 * 1024 * 1024 + 123)  # over the 1 MiB default LFS threshold


@pytest.fixture()
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    rev = tmp_path / "hub" / REPO / "main"
    (rev / "sub").mkdir(parents=True)
    (rev / "config.json").write_bytes(SMALL)
    (rev / "model.bin").write_bytes(BIG)
    (rev / "sub" / "extra.json").write_bytes(b"{}")
    with HubServer(tmp_path / "hub") as srv:
        point_client_at(monkeypatch, srv.url, tmp_path / "hf_home")
        yield srv


def test_download_records_commit_and_second_call_transfers_nothing(server: HubServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    small = hf_hub_download(REPO, "config.json", local_dir=out)
    big = hf_hub_download(REPO, "model.bin", local_dir=out)
    assert Path(small).read_bytes() == SMALL and Path(big).read_bytes() == BIG
    sha = commit_sha(REPO, "main")
    meta = (out / ".cache" / "huggingface" / "download" / "model.bin.metadata").read_text().splitlines()
    assert meta[0] == sha  # commit hash recorded next to the file
    assert len(server.transfers()) == 2 and server.bytes_sent == len(SMALL) + len(BIG)

    hf_hub_download(REPO, "config.json", local_dir=out)
    hf_hub_download(REPO, "model.bin", local_dir=out)
    assert len(server.transfers()) == 2  # only HEADs the second time
    # Pinned to the commit sha: no request at all.
    n = len(server.requests)
    hf_hub_download(REPO, "model.bin", local_dir=out, revision=sha)
    assert len(server.requests) == n


def test_cache_dir_download_by_commit(server: HubServer) -> None:
    path = hf_hub_download(REPO, "model.bin")
    assert path.startswith(constants.HF_HUB_CACHE) and commit_sha(REPO, "main") in path
    assert Path(path).read_bytes() == BIG


def test_dropped_connection_default_chunk_restarts_without_range(server: HubServer, tmp_path: Path) -> None:
    # httpx buffers DOWNLOAD_CHUNK_SIZE (10 MiB) before handing bytes over, so a 3 MB body cut short
    # writes nothing: the internal retry starts again from byte 0, without a Range header.
    server.drop_after("model.bin", 1_000_000)
    path = hf_hub_download(REPO, "model.bin", local_dir=tmp_path / "out")
    assert Path(path).read_bytes() == BIG
    gets = server.transfers("model.bin")
    assert len(gets) == 2 and "range" not in gets[1][2]


def test_dropped_connection_resumes_with_range(
    server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # read at call time
    server.drop_after("model.bin", 1_000_000)
    out = tmp_path / "out"
    path = hf_hub_download(REPO, "model.bin", local_dir=out)
    assert Path(path).read_bytes() == BIG
    gets = server.transfers("model.bin")
    assert len(gets) == 2 and "range" not in gets[0][2]
    resumed_at = int(gets[1][2]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= 1_000_000
    assert server.bytes_sent == 1_000_000 + len(BIG) - resumed_at
    assert not list(out.rglob("*.incomplete"))


def test_missing_file_revision_and_repo(server: HubServer, tmp_path: Path) -> None:
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.bin", local_dir=tmp_path / "a")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9", local_dir=tmp_path / "b")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/absent", "config.json", local_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        HfApi().model_info(REPO, revision="v9")


def test_model_info_sizes_and_listing(server: HubServer) -> None:
    info = HfApi().model_info(REPO, revision="main", files_metadata=True)
    assert info.sha == commit_sha(REPO, "main")
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {"config.json": len(SMALL), "model.bin": len(BIG), "sub/extra.json": 2}
    lfs = {s.rfilename: s.lfs for s in info.siblings}
    assert lfs["model.bin"] is not None and lfs["model.bin"].size == len(BIG) and lfs["config.json"] is None
    assert sorted(HfApi().list_repo_files(REPO)) == ["config.json", "model.bin", "sub/extra.json"]


def test_snapshot_allow_patterns(server: HubServer, tmp_path: Path) -> None:
    out = Path(snapshot_download(REPO, allow_patterns=["*.json"], local_dir=tmp_path / "snap"))
    assert (out / "config.json").read_bytes() == SMALL and (out / "sub" / "extra.json").exists()
    assert not (out / "model.bin").exists()
    assert len(server.transfers()) == 2


def test_token_required(server: HubServer, tmp_path: Path) -> None:
    server.token = "hf_secret"
    with pytest.raises(GatedRepoError):  # a RepositoryNotFoundError subclass
        hf_hub_download(REPO, "config.json", local_dir=tmp_path / "a", token=False)
    assert not server.token_seen
    path = hf_hub_download(REPO, "config.json", local_dir=tmp_path / "b", token="hf_secret")
    assert Path(path).read_bytes() == SMALL and server.token_seen
    assert server.transfers()[-1][2]["authorization"] == "Bearer hf_secret"

"""The download stage against a hub stand-in on 127.0.0.1 (real huggingface_hub code)."""

from __future__ import annotations

import json
import shutil
from collections import namedtuple

import pytest
from safetensors.torch import load_file

from checkpoints import MOMENTS, make_family
from hub_server import HubServer, commit_sha, point_client_at
from otamerge.io import download as dl
from otamerge.cli import main
from otamerge.errors import OtaMergeError

REPO, OTHER = "lab/expert-math", "lab/moments-only"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam"), n_experts=1, seed=4, hidden=64)


@pytest.fixture
def hub(family, tmp_path, monkeypatch):
    root = tmp_path / "hubroot"
    shutil.copytree(family["expert0"], root / REPO / "main")
    (root / REPO / "main" / "README.md").write_text("not needed for a merge\n")
    shutil.copytree(family["expert0"] / "export", root / OTHER / "main" / "ckpt-1100")
    with HubServer(root, lfs_threshold=1 << 16) as server:
        point_client_at(monkeypatch, server.url, tmp_path / "hfhome")
        yield server


def test_full_download_records_the_commit_and_fetches_only_what_is_needed(hub, family, tmp_path):
    out = dl.download(dl.Source("math", REPO, "main", "export/exp_avg_sq.safetensors"), tmp_path / "m")
    manifest = json.loads((out / dl.MANIFEST).read_text())
    assert manifest["commit"] == commit_sha(REPO, "main") and manifest["revision"] == "main"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "manifest.json", "model.safetensors",
                     "preconditioner.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "model.safetensors").read_bytes() == (family["expert0"] / "model.safetensors").read_bytes()
    assert (out / "preconditioner.safetensors").read_bytes() == (family["expert0"] / MOMENTS).read_bytes()
    assert not any("README" in path for _, path, _ in hub.transfers())
    assert not (tmp_path / ".m.partial").exists()


def test_a_rerun_transfers_nothing(hub, tmp_path):
    src = dl.Source("math", REPO, "main", "export/exp_avg_sq.safetensors")
    dl.download(src, tmp_path / "m")
    before = len(hub.requests)
    dl.download(src, tmp_path / "m")
    assert len(hub.requests) == before


def test_a_dropped_connection_is_resumed(hub, family, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1 << 14)  # flush often, so a resume has bytes
    hub.drop_after("model.safetensors", 40_000)
    out = dl.download(dl.Source("math", REPO, "main"), tmp_path / "m")
    gets = hub.transfers("model.safetensors")
    assert len(gets) == 2 and gets[1][2].get("range", "").startswith("bytes=")
    assert (out / "model.safetensors").read_bytes() == (family["expert0"] / "model.safetensors").read_bytes()


@pytest.mark.parametrize("form", ["repo/path", "repo:path", "local"])
def test_preconditioner_in_each_path_form(hub, family, tmp_path, form):
    pre = {"repo/path": f"{OTHER}/ckpt-1100/exp_avg_sq.safetensors",
           "repo:path": f"{OTHER}:ckpt-1100/exp_avg_sq.safetensors",
           "local": str(family["expert0"] / MOMENTS)}[form]
    out = dl.download(dl.Source("math", REPO, "main", pre), tmp_path / "m")
    assert load_file(out / "preconditioner.safetensors").keys() == load_file(family["expert0"] / MOMENTS).keys()
    entry = json.loads((out / dl.MANIFEST).read_text())["files"][-1]
    assert entry["path"] == "preconditioner.safetensors"
    assert entry.get("repo") == (None if form == "local" else OTHER)


def test_missing_file_names_repo_revision_and_path(hub, tmp_path):
    with pytest.raises(OtaMergeError, match=f"preconditioner export/nope.safetensors not found in {REPO} at "
                                            f"revision {commit_sha(REPO, 'main')}"):
        dl.download(dl.Source("math", REPO, "main", "export/nope.safetensors"), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_unknown_revision_is_a_clear_error(hub, tmp_path):
    with pytest.raises(OtaMergeError, match=f"revision 'v9' not found in {REPO}"):
        dl.download(dl.Source("math", REPO, "v9"), tmp_path / "m")


def test_not_enough_disk_space_stops_before_downloading(hub, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda _: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(OtaMergeError, match=r"needs \d+\.\d\d (kB|MB) but .* has only 1.00 kB free"):
        dl.download(dl.Source("math", REPO, "main", "export/exp_avg_sq.safetensors"), tmp_path / "m")
    assert hub.transfers() == [] and not (tmp_path / "m").exists()


def test_gated_repo_uses_hf_token_and_never_writes_it(hub, tmp_path, monkeypatch, capsys):
    hub.token = "hf_secret_token_123"
    with pytest.raises(OtaMergeError, match="not found \\(or gated: set HF_TOKEN\\)"):
        dl.download(dl.Source("math", REPO, "main"), tmp_path / "m")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert main(["download", REPO, str(tmp_path / "m"), "--preconditioner",
                 "export/exp_avg_sq.safetensors"]) == 0
    assert hub.token_seen
    written = b"".join(p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file())
    out = capsys.readouterr()
    assert hub.token.encode() not in written and hub.token not in out.out + out.err


def test_repo_paths_escaping_the_folder_are_refused():
    for bad in ("../x", "/etc/passwd", "a/../../b", "a\\..\\b"):
        with pytest.raises(OtaMergeError, match="refusing path"):
            dl.safe_relative(bad, "test")
    assert str(dl.safe_relative("export/exp_avg_sq.safetensors", "t")) == "export/exp_avg_sq.safetensors"


@pytest.mark.parametrize("pre", ["export/../../../secret.safetensors", f"{REPO}:../x.safetensors",
                                 f"{OTHER}/../../x.safetensors"])
def test_a_hub_preconditioner_escaping_its_repo_is_refused_before_any_transfer(hub, tmp_path, capsys, pre):
    assert main(["download", REPO, str(tmp_path / "m"), "--preconditioner", pre]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "refusing path" in err and "escaping the download folder" in err, err
    assert hub.transfers() == [] and not (tmp_path / "m").exists() and not (tmp_path / ".m.partial").exists()


def test_a_local_preconditioner_escaping_the_model_folder_is_refused(family, tmp_path, capsys):
    model = tmp_path / "models/m"
    shutil.copytree(family["expert0"], model)
    shutil.copyfile(family["expert0"] / MOMENTS, tmp_path / "secret.safetensors")
    assert main(["download", str(model), str(tmp_path / "out"), "--preconditioner", "../../secret.safetensors"]) == 1
    assert "refusing path '../../secret.safetensors'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_local_sources_are_linked_with_their_preconditioner(family, tmp_path):
    out = dl.download(dl.Source("math", str(family["expert0"]), preconditioner="export/exp_avg_sq.safetensors"),
                      tmp_path / "m")
    assert (out / "preconditioner.safetensors").stat().st_ino == (family["expert0"] / MOMENTS).stat().st_ino
    assert json.loads((out / dl.MANIFEST).read_text())["commit"] is None

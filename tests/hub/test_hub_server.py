"""The test Hub server answers the installed clients (huggingface_hub, datasets) as the Hub does."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

from .conftest import OTHER_TOKEN


def test_upload_and_download_round_trip(hub_server, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "notes.txt").write_text("notes")
    weights = bytes(range(256)) * 300
    (folder / "model.safetensors").write_bytes(weights)
    api = HfApi()
    assert api.whoami()["name"] == "alice"
    url = api.create_repo("alice/round-trip")
    assert str(url) == f"{hub_server.url}/alice/round-trip"
    api.create_repo("alice/round-trip", exist_ok=True)  # 409 accepted
    api.upload_folder(repo_id="alice/round-trip", folder_path=folder, commit_message="add files")
    stored = hub_server.files("alice/round-trip")
    assert stored["model.safetensors"] == weights and stored["sub/notes.txt"] == b"notes"
    assert sum(1 for method, path, _ in hub_server.hub.log if method == "PUT" and "lfs-upload" in path) == 1
    assert sorted(api.list_repo_files("alice/round-trip")) == [".gitattributes", "config.json", "model.safetensors",
                                                               "sub/notes.txt"]
    local = snapshot_download("alice/round-trip", cache_dir=tmp_path / "cache")
    assert (tmp_path / "cache").exists() and open(f"{local}/model.safetensors", "rb").read() == weights
    assert open(hf_hub_download("alice/round-trip", "sub/notes.txt", cache_dir=tmp_path / "c2")).read() == "notes"
    info = api.model_info("alice/round-trip")
    assert info.sha == hub_server.hub.repos[("model", "alice/round-trip")].branches["main"]
    assert sorted(s.rfilename for s in info.siblings) == sorted(stored)


def test_other_namespace_is_refused(hub_server):
    api = HfApi()
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo("bob/not-yours")
    assert error.value.response.status_code == 403 and 'namespace "bob"' in str(error.value)
    api.create_repo("xray-org/shared")  # alice's organisation
    HfApi(token=OTHER_TOKEN).create_repo("bob/public")
    with pytest.raises(HfHubHTTPError) as error:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id="bob/public")
    assert error.value.response.status_code == 403 and "bob/public" in str(error.value)


def test_missing_and_private_repos_are_not_found(hub_server):
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("alice/absent")
    HfApi(token=OTHER_TOKEN).create_repo("bob/secret", private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("bob/secret")
    assert HfApi(token=OTHER_TOKEN).model_info("bob/secret").private


def test_byte_ranges(hub_server):
    api = HfApi()
    api.create_repo("alice/ranges")
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.bin", repo_id="alice/ranges")
    from huggingface_hub import HfFileSystem

    with HfFileSystem(endpoint=hub_server.url).open("alice/ranges/digits.bin", "rb", block_size=4) as handle:
        handle.seek(3)
        assert handle.read(4) == b"3456"

"""The Hugging Face hub (srr/models/pretrained.py), without a network: ``push_to_hub`` uploads exactly the
``save_pretrained`` folder, ``hf://owner/repo`` (and ``hf-hub:``) reads it back, through the library and the
CLI; without ``huggingface_hub`` installed both say so in one line."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from srr.cli import app
from srr.models import create_model, push_to_hub
from srr.models.pretrained import MissingPackageError, parse_hub_spec
from test_pretrained import images, small  # the same small model and images as the folder round trip


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake hub: ``upload_folder`` copies the uploaded folder to ``tmp_path/hub/<repo>``, ``snapshot_download``
    serves it; every call is recorded."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        calls.append(("upload_folder", repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs))
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id, dirs_exist_ok=True)
        return f"commit to {repo_id}"

    def snapshot_download(repo_id, **kwargs):
        calls.append(("snapshot_download", repo_id, kwargs))
        folder = tmp_path / "hub" / repo_id
        if not folder.is_dir():
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"no repo {repo_id} in the cache, and offline")
        return str(folder)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return calls


def test_push_uploads_the_save_pretrained_folder_and_hf_reads_it_back_exactly(hub):
    model = small(variant="crate_t", lam=0.2)
    assert model.push_to_hub("someone/crate-nano-test", private=True) == "commit to someone/crate-nano-test"
    (_, repo, create_kwargs), (_, uploaded_repo, files, upload_kwargs) = hub
    assert repo == uploaded_repo == "someone/crate-nano-test" and create_kwargs["private"] is True
    assert files == ["config.json", "model.safetensors"]  # the save_pretrained folder, nothing else
    for spec in ("hf://someone/crate-nano-test", "hf-hub:someone/crate-nano-test"):
        loaded = create_model(pretrained=spec).eval()
        assert loaded.config == model.config
        assert torch.equal(loaded(images(model)), model(images(model)))
    download = hub[-1]
    assert download[0] == "snapshot_download" and download[2]["allow_patterns"] == ["model.safetensors", "config.json"]


def test_a_revision_reaches_the_hub_and_fine_tuning_overrides_apply(hub, caplog):
    push_to_hub(small(), "someone/m")
    create_model(pretrained="hf://someone/m@v1.0")
    assert hub[-1][2]["revision"] == "v1.0"
    with caplog.at_level("WARNING", logger="srr"):
        tuned = create_model(pretrained="hf://someone/m", num_classes=3)
    assert tuned.config.num_classes == 3
    assert "hub weights 'hf://someone/m': new classifier head, re-initialised (5 -> 3 classes)" in caplog.text


def test_hub_failures_name_the_source(hub):
    with pytest.raises(FileNotFoundError, match=r"could not fetch 'hf://someone/missing' from the Hugging Face hub"):
        create_model(pretrained="hf://someone/missing")


@pytest.mark.parametrize("spec", ["hf://no-slash", "hf://a/b/c", "hf://a/b@", "hf-hub:/repo", "hf://a b/c"])
def test_malformed_hub_sources_are_refused_naming_the_form(spec):
    with pytest.raises(ValueError, match="owner/repo"):
        parse_hub_spec(spec)
    with pytest.raises(ValueError, match="repo_id must look like 'owner/repo'"):
        push_to_hub(small(), spec.split(":", 1)[1].strip("/"))


def test_local_paths_are_not_hub_sources(tmp_path):
    assert parse_hub_spec(str(tmp_path / "model")) is None and parse_hub_spec(tmp_path) is None
    assert parse_hub_spec("hf://owner/repo") == ("owner/repo", None)
    assert parse_hub_spec("hf-hub:owner/repo.v2@main") == ("owner/repo.v2", "main")


def test_without_huggingface_hub_one_line_names_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub raises ImportError
    for call in (lambda: push_to_hub(small(), "someone/m"), lambda: create_model(pretrained="hf://someone/m")):
        with pytest.raises(MissingPackageError) as error:
            call()
        message = str(error.value)
        assert "huggingface_hub" in message and "pip install 'srr[hub]'" in message and "\n" not in message
    result = CliRunner().invoke(app, ["eval", "--model", "crate_nano", "--pretrained", "hf://someone/m",
                                      "--dataset", "digits", "--device", "cpu"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "huggingface_hub" in lines[0] and "Traceback" not in result.output


def test_the_cli_evaluates_and_fine_tunes_from_the_hub(hub, tmp_path):
    torch.manual_seed(0)
    push_to_hub(create_model("crate_nano"), "someone/nano")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--pretrained", "hf://someone/nano", "--dataset", "digits", "--json",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert '"checkpoint": "hf://someone/nano"' in result.stdout
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", "--init-from", "hf://someone/nano", "--epochs", "1", "--batch-size", "32",
                                 "--train-subset", "64", "--measure-samples", "0", "--threads", "1", "--device",
                                 "cpu", "--quiet", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "latest.pt").is_file()
    bad = runner.invoke(app, ["eval", "--pretrained", "hf://nope", "--dataset", "digits"])
    assert bad.exit_code == 2 and "owner/repo" in bad.stderr

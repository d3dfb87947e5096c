"""`push_checkpoint` / `xray-hf push` / `model.push_to_hub` against the in-memory Hub server."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from huggingface_hub import snapshot_download
from transformers import AutoModel, AutoProcessor

import xray_hf  # noqa: F401
from xray_hf import XrayVisualConfig, XrayVisualModel
from xray_hf.cli import main
from xray_hf.hub import HubPushError, push_checkpoint

from .checkpoints import (
    CAPTIONS,
    add_training_state,
    clip_checkpoint,
    images,
    mae_checkpoint,
)
from .conftest import TOKEN


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("clip")
    model, processor = clip_checkpoint(directory)
    return directory, model, processor


@pytest.fixture
def no_backoff(monkeypatch):
    """huggingface_hub waits 1, 2, 4, 8, 8 s between its retries: not in tests."""
    import huggingface_hub.utils._http as http

    monkeypatch.setattr(http.time, "sleep", lambda seconds: None)


def test_cli_push_uploads_the_checkpoint_without_training_state(hub_server, clip_dir, capsys, tmp_path):
    directory, model, processor = clip_dir
    junk = add_training_state(directory)
    try:
        assert main(["push", str(directory), "--repo-id", "alice/tiny-clip", "--commit-message", "first"]) == 0
    finally:
        for relative in junk:
            (directory / relative).unlink()
    assert capsys.readouterr().out.strip() == f"pushed {directory} to {hub_server.url}/alice/tiny-clip"
    stored = hub_server.files("alice/tiny-clip")
    assert not any(path.startswith(("checkpoint-", "runs/", "text_cache/", "optimizer", "training_args", "trainer",
                                    "scheduler", "rng_state")) for path in stored)
    expected = {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
                "README.md", "modeling_clip.py", "configuration_clip.py", "processing_clip.py", "modeling_visual.py"}
    assert expected <= set(stored)
    assert stored["model.safetensors"] == (directory / "model.safetensors").read_bytes()
    config = json.loads(stored["config.json"])
    assert config["auto_map"] == {"AutoConfig": "configuration_clip.XrayCLIPConfig",
                                  "AutoModel": "modeling_clip.XrayCLIPModel",
                                  "AutoModelForZeroShotImageClassification": "modeling_clip.XrayCLIPModel"}
    assert json.loads(stored["processor_config.json"])["auto_map"] == {"AutoProcessor": "processing_clip.XrayCLIPProcessor"}
    assert "auto_map" not in json.loads((directory / "config.json").read_text())  # the local folder is untouched
    card = stored["README.md"].decode()
    assert card.startswith("---\n") and "alice/tiny-clip" in card and "trust_remote_code=True" in card
    repo = hub_server.hub.repos[("model", "alice/tiny-clip")]
    assert repo.commits[repo.branches["main"]].summary == "first"

    # download: the snapshot holds the uploaded bytes, and from_pretrained (with xray_hf) gives the same model
    local = snapshot_download("alice/tiny-clip", cache_dir=tmp_path / "cache")
    assert open(f"{local}/model.safetensors", "rb").read() == stored["model.safetensors"]
    loaded = AutoModel.from_pretrained("alice/tiny-clip").eval()
    assert type(loaded) is type(model)
    inputs = processor(text=CAPTIONS, images=images(3), return_tensors="pt")
    hub_inputs = AutoProcessor.from_pretrained("alice/tiny-clip")(text=CAPTIONS, images=images(3), return_tensors="pt")
    for key in inputs:
        torch.testing.assert_close(hub_inputs[key], inputs[key], atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits_per_image, model(**inputs).logits_per_image)


def test_push_refused_for_another_namespace(hub_server, clip_dir, capsys):
    directory = clip_dir[0]
    with pytest.raises(HubPushError, match='rights to create a model under the namespace "bob"') as error:
        push_checkpoint(directory, "bob/tiny-clip")
    assert "bob/tiny-clip" in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        main(["push", str(directory), "--repo-id", "bob/tiny-clip"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("xray-hf push: error: ") and 'namespace "bob"' in err
    assert ("model", "bob/tiny-clip") not in hub_server.hub.repos


@pytest.mark.parametrize("mode", ["drop", "500"])
def test_interrupted_upload_is_reported_and_a_retry_succeeds(hub_server, tmp_path, no_backoff, mode):
    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    hub_server.fail_next_uploads(6, mode)  # the first try and huggingface_hub's 5 retries
    with pytest.raises(HubPushError) as error:
        push_checkpoint(directory, "alice/tiny-mae")
    message = str(error.value)
    assert "alice/tiny-mae" in message and "can be retried" in message
    assert "model.safetensors" not in hub_server.files("alice/tiny-mae")  # nothing committed
    url = push_checkpoint(directory, "alice/tiny-mae")
    assert url == f"{hub_server.url}/alice/tiny-mae"
    assert hub_server.files("alice/tiny-mae")["model.safetensors"] == (directory / "model.safetensors").read_bytes()


def test_transient_upload_failures_are_retried(hub_server, tmp_path, no_backoff):
    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    hub_server.fail_next_uploads(2, "drop")
    push_checkpoint(directory, "xray-org/tiny-mae")  # alice's organisation
    failed = [entry for entry in hub_server.hub.log if entry[0] == "PUT" and entry[2] != 200]
    assert len(failed) == 2
    assert hub_server.files("xray-org/tiny-mae")["model.safetensors"] == (directory / "model.safetensors").read_bytes()


def test_token_is_never_printed_or_logged(hub_server, tmp_path, capfd, caplog, no_backoff):
    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    caplog.set_level(logging.DEBUG)
    messages = []
    main(["push", str(directory), "--repo-id", "alice/tiny-mae"])
    other = tmp_path / "other"
    mae_checkpoint(other, seed=1)  # other weights: the server already stores the first ones and would skip the PUT
    for source, repo_id, failures in ((directory, "bob/tiny-mae", 0), (other, "alice/other-mae", 6)):
        hub_server.fail_next_uploads(failures)
        with pytest.raises(HubPushError) as error:
            push_checkpoint(source, repo_id)
        messages += [str(error.value), repr(error.value), str(error.value.__cause__)]
    with pytest.raises(SystemExit):
        main(["push", str(directory), "--repo-id", "bob/tiny-mae"])
    captured = capfd.readouterr()
    assert "pushed" in captured.out and "xray-hf push: error" in captured.err and caplog.records
    for text in (captured.out, captured.err, caplog.text, *messages):
        assert TOKEN not in text


def test_revision_goes_to_its_branch(hub_server, tmp_path):
    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    push_checkpoint(directory, "alice/tiny-mae")
    main_files = hub_server.files("alice/tiny-mae")
    (directory / "extra.json").write_text("{}")
    url = push_checkpoint(directory, "alice/tiny-mae", revision="dev", commit_message="on dev")
    assert url == f"{hub_server.url}/alice/tiny-mae/tree/dev"
    assert "extra.json" in hub_server.files("alice/tiny-mae", "dev")
    assert hub_server.files("alice/tiny-mae") == main_files


def test_model_push_to_hub_carries_remote_code_and_card(hub_server):
    torch.manual_seed(0)
    model = XrayVisualModel(XrayVisualConfig.from_preset("tiny")).eval()
    model.push_to_hub("alice/tiny-backbone")
    stored = hub_server.files("alice/tiny-backbone")
    config = json.loads(stored["config.json"])
    assert config["auto_map"] == {"AutoConfig": "configuration_visual.XrayVisualConfig",
                                  "AutoModel": "modeling_visual.XrayVisualModel"}
    assert {"configuration_visual.py", "modeling_visual.py", "modeling_outputs.py"} <= set(stored)
    card = stored["README.md"].decode()
    assert "automatically generated" not in card and "alice/tiny-backbone" in card
    loaded = AutoModel.from_pretrained("alice/tiny-backbone")
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixels).pooler_output, model(pixels).pooler_output)


def test_push_deletes_only_stale_generated_modules(hub_server, tmp_path):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("alice/tiny-mae")
    stale = ("# Generated by xray_hf.remote_code from xray_hf.modeling.old (xray_hf source, flattened for Hub remote "
             "code).\n# Do not edit: `xray-hf push` writes it again from the installed package.\nimport torch\n")
    user_files = {"handler.py": "def handle(data):\n    return data\n",
                  "losses.py": "# the user's own, with a flat-module-like name\n",
                  "scripts/train.py": "# Generated by xray_hf.remote_code from x (but not at the top level)\n"}
    for path, text in {**user_files, "modeling_old.py": stale,
                       "modeling_visual.py": stale.replace("old", "visual")}.items():
        api.upload_file(path_or_fileobj=text.encode(), path_in_repo=path, repo_id="alice/tiny-mae")
    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    push_checkpoint(directory, "alice/tiny-mae")
    stored = hub_server.files("alice/tiny-mae")
    for path, text in user_files.items():
        assert stored[path].decode() == text
    assert "modeling_old.py" not in stored
    assert stored["modeling_visual.py"].decode().startswith(  # regenerated, not deleted
        "# Generated by xray_hf.remote_code from xray_hf.modeling.visual")
    assert "class XrayVisualModel" in stored["modeling_visual.py"].decode()


def test_generated_header_is_recognised():
    from xray_hf.remote_code import flatten_source, is_generated_header

    assert is_generated_header(flatten_source("xray_hf.modeling.visual").splitlines(keepends=True)[0])
    assert not is_generated_header("# Generated by hand\n")


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _file_vanished(*args, **kwargs):
    try:
        raise FileNotFoundError(2, "No such file or directory", "model.safetensors")
    except FileNotFoundError as error:  # huggingface_hub wraps failed LFS uploads in a RuntimeError
        raise RuntimeError("Error while uploading 'model.safetensors' to the Hub.") from error


@pytest.mark.parametrize(("failure", "expected"), [(_disk_full, OSError), (_file_vanished, RuntimeError)])
def test_local_errors_are_not_reported_as_retryable_interruptions(hub_server, tmp_path, monkeypatch, failure,
                                                                  expected):
    from huggingface_hub import HfApi

    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    monkeypatch.setattr(HfApi, "upload_folder", failure)
    with pytest.raises(expected) as error:
        push_checkpoint(directory, "alice/tiny-mae")
    assert not isinstance(error.value, HubPushError)


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"), TimeoutError("timed out")])
def test_connection_errors_are_retryable_interruptions(hub_server, tmp_path, monkeypatch, error):
    from huggingface_hub import HfApi

    def fail(*args, **kwargs):
        raise error

    directory = tmp_path / "mae"
    mae_checkpoint(directory)
    monkeypatch.setattr(HfApi, "upload_folder", fail)
    with pytest.raises(HubPushError, match="can be retried"):
        push_checkpoint(directory, "alice/tiny-mae")


def test_processors_push_to_hub_carry_remote_code_and_auto_map(hub_server, clip_dir):
    from xray_hf import XrayVisualImageProcessor, XrayVisualVideoProcessor

    processor = clip_dir[2]
    processor.push_to_hub("alice/tiny-processor")
    stored = hub_server.files("alice/tiny-processor")
    assert "config.json" not in stored
    config = json.loads(stored["processor_config.json"])
    assert config["auto_map"] == {"AutoProcessor": "processing_clip.XrayCLIPProcessor"}
    assert config["image_processor"]["auto_map"] == {
        "AutoImageProcessor": "processing_image_processing.XrayVisualImageProcessor"}
    assert config["video_processor"]["auto_map"] == {
        "AutoVideoProcessor": "processing_video_processing.XrayVisualVideoProcessor"}
    assert {"processing_clip.py", "processing_image_processing.py", "processing_video_processing.py",
            "processing_transforms.py", "tokenizer.json"} <= set(stored)
    assert not any(name.startswith(("modeling_", "configuration_")) for name in stored)

    XrayVisualImageProcessor(size=32).push_to_hub("alice/tiny-image-processor")
    stored = hub_server.files("alice/tiny-image-processor")
    assert json.loads(stored["preprocessor_config.json"])["auto_map"] == {
        "AutoImageProcessor": "processing_image_processing.XrayVisualImageProcessor"}
    assert "processing_image_processing.py" in stored and "processing_video_processing.py" not in stored

    XrayVisualVideoProcessor(size=32, num_frames=4).push_to_hub("alice/tiny-video-processor")
    stored = hub_server.files("alice/tiny-video-processor")
    assert json.loads(stored["video_preprocessor_config.json"])["auto_map"] == {
        "AutoVideoProcessor": "processing_video_processing.XrayVisualVideoProcessor"}
    assert {"processing_video_processing.py", "processing_image_processing.py"} <= set(stored)


def test_trainer_push_to_hub_uploads_like_xray_hf_push(hub_server, tmp_path):
    """`trainer.push_to_hub()` after training (the transformers idiom) uploads the model with remote code and a card
    and none of the training state; a bare `hub_model_id` goes to the token's namespace."""
    from xray_hf import XrayVisualForPreTraining
    from xray_hf.trainers.mae import MAETrainer, MAETrainingArguments

    config = XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
                                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2)
    torch.manual_seed(0)
    args = MAETrainingArguments(output_dir=str(tmp_path / "mae"), max_steps=2, save_steps=1, report_to=[],
                                disable_tqdm=True, hub_model_id="trained-mae", use_cpu=True)
    batches = [{"pixel_values": torch.randn(2, 3, 16, 16)} for _ in range(2)]
    trainer = MAETrainer(model=XrayVisualForPreTraining(config), args=args, train_dataset=batches,
                         data_collator=lambda rows: rows[0])
    trainer.train()
    with pytest.raises(TypeError, match=r"model-card arguments \['tags'\]"):
        trainer.push_to_hub(tags=["mine"])
    url = trainer.push_to_hub()
    assert url == f"{hub_server.url}/alice/trained-mae"
    stored = hub_server.files("alice/trained-mae")
    assert {"config.json", "model.safetensors", "README.md", "modeling_mae.py", "configuration_visual.py"} <= set(stored)
    assert not any(path.startswith(("checkpoint-", "optimizer", "trainer_state", "training_args")) for path in stored)
    loaded = AutoModel.from_pretrained("alice/trained-mae")
    pixels = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        expected = trainer.model.xray_visual(pixels).pooler_output
        assert torch.allclose(loaded(pixels).pooler_output, expected, atol=1e-6)


def test_trainer_pushes_each_checkpoint_like_xray_hf_push(hub_server, tmp_path):
    """`push_to_hub=True` in the training arguments: every save pushes the checkpoint's model with remote code and a
    card, never the pickled training_args.bin or other training state the Trainer's own push would upload."""
    from xray_hf import XrayVisualForPreTraining
    from xray_hf.trainers.mae import MAETrainer, MAETrainingArguments

    config = XrayVisualConfig.from_preset("tiny", image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=2, intermediate_size=64, decoder_hidden_size=32,
                                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2)
    torch.manual_seed(0)
    args = MAETrainingArguments(output_dir=str(tmp_path / "mae"), max_steps=2, save_steps=1, report_to=[],
                                disable_tqdm=True, push_to_hub=True, hub_model_id="alice/mae-in-training",
                                use_cpu=True)
    batches = [{"pixel_values": torch.randn(2, 3, 16, 16)} for _ in range(2)]
    trainer = MAETrainer(model=XrayVisualForPreTraining(config), args=args, train_dataset=batches,
                         data_collator=lambda rows: rows[0])
    trainer.train()
    stored = hub_server.files("alice/mae-in-training")
    assert {"config.json", "model.safetensors", "README.md", "modeling_mae.py"} <= set(stored)
    assert not any(path.endswith(".bin") or path.startswith(("checkpoint-", "optimizer", "trainer_state",
                                                             "training_args", "runs/")) for path in stored)
    assert stored["model.safetensors"] == (tmp_path / "mae" / "checkpoint-2" / "model.safetensors").read_bytes()
    repo = hub_server.hub.repos[("model", "alice/mae-in-training")]
    summaries = sorted(commit.summary for commit in repo.commits.values())
    assert [s for s in summaries if s.startswith("Training")] == ["Training in progress, step 1",
                                                                  "Training in progress, step 2"]  # one per save

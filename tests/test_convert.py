import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from xray_hf.cli import main
from xray_hf.convert import find_smollm2_gguf, smollm2_checkpoint, smollm2_tokenizer


def test_smollm2_tokenizer_is_the_real_one():
    tokenizer = smollm2_tokenizer()
    assert len(tokenizer) == 49152
    assert tokenizer("a photo of a cat")["input_ids"] == [81, 8003, 282, 253, 2644]
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.pad_token_id == 2
    assert find_smollm2_gguf().name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_cli_extracts_the_tokenizer(tmp_path, capsys):
    assert main(["convert", "smollm2", "--output", str(tmp_path / "tok"), "--tokenizer-only"]) == 0
    assert "written to" in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tokenizer("a photo of a cat")["input_ids"] == [81, 8003, 282, 253, 2644]


def test_cli_reports_bad_arguments(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "smollm2", "--output", str(tmp_path), "--gguf", str(tmp_path / "missing.gguf")])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["convert", "smollm2", "--output", str(tmp_path), "--dtype", "float99"])


@pytest.mark.slow
def test_converted_smollm2_is_a_plain_working_checkpoint():
    path = smollm2_checkpoint()  # converted once from the GGUF file (~20 s), then cached
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        next_token = model(input_ids=ids).logits[0, -1].argmax().item()
    assert tokenizer.decode(next_token).strip() == "Paris"


def test_cli_copies_minilm_and_the_copy_builds_the_same_tower(tmp_path, capsys):
    from xray_hf import XrayLLM2CLIPTextModel
    from xray_hf.convert import minilm_folder, resolve_text_model

    assert main(["convert", "minilm", "--output", str(tmp_path / "minilm")]) == 0
    assert "written to" in capsys.readouterr().out
    assert resolve_text_model("minilm") == str(minilm_folder())
    assert resolve_text_model(str(tmp_path)) == str(tmp_path)  # a folder is itself
    torch.manual_seed(0)
    copied = XrayLLM2CLIPTextModel.from_llm(tmp_path / "minilm", projection_dim=8)
    torch.manual_seed(0)
    packaged = XrayLLM2CLIPTextModel.from_llm(resolve_text_model("minilm"), projection_dim=8)
    settings = ("pooling", "normalize_pooled", "max_text_length", "kind")
    assert [getattr(copied.config, k) for k in settings] == [getattr(packaged.config, k) for k in settings]
    for (name, a), (_, b) in zip(copied.state_dict().items(), packaged.state_dict().items()):
        assert torch.equal(a, b), name

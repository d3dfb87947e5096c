"""Suite-wide settings."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP barriers make them 10-40x
    slower. Tests marked `slow` (real models) keep the machine's thread count."""
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory):
    """A tiny LLaMA checkpoint with the SmolLM2 tokenizer beside it (what the text stages' `from_llm` reads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from xray_hf.convert import smollm2_tokenizer

    tokenizer = smollm2_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("llm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path

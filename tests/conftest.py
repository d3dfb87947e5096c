"""Suite-wide settings."""

import os

import pytest
import torch


def _worker_threads() -> int:
    """Under pytest-xdist (`-n N`) each of the N workers gets its share of the cores, so that `slow` tests running
    side by side do not oversubscribe the machine; the whole machine without xdist."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // workers)


@pytest.fixture(autouse=True)
def one_thread(request):
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP barriers make them 10-40x
    slower. Tests marked `slow` (real models) keep the worker's share of the machine's threads."""
    if request.node.get_closest_marker("slow"):
        threads = torch.get_num_threads()
        torch.set_num_threads(min(threads, _worker_threads()))
        yield
        torch.set_num_threads(threads)
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

"""`EmbedOptions`: one set of embedding options for `run_eval`, dataset embedding, the search index and the CLI."""

import argparse
from types import SimpleNamespace

import pytest

from xray_hf.cli import build_parser
from xray_hf.eval.options import DEFAULT_NUM_FRAMES, EmbedOptions


def test_parsers_read_the_same_options():
    parser = argparse.ArgumentParser()
    EmbedOptions.add_arguments(parser)
    args = parser.parse_args(["--batch-size", "8", "--num-frames", "4", "--stride", "3", "--num-workers", "2",
                              "--device", "cpu", "--compile"])
    assert EmbedOptions.from_args(args) == EmbedOptions(8, 4, 3, 2, "cpu", True)
    assert EmbedOptions.from_args(parser.parse_args([])) == EmbedOptions()
    cli = build_parser()
    assert EmbedOptions.from_args(cli.parse_args(["embed"])) == EmbedOptions(batch_size=8)
    eval_args = cli.parse_args(["eval", "--model", "m", "--task", "knn", "--dataset", "d", "--num-frames", "2"])
    assert EmbedOptions.from_args(eval_args) == EmbedOptions(num_frames=2)
    ids = cli.parse_args(["semantic-ids", "--model", "m", "--dataset", "d", "--levels", "2", "--codebook-size", "4",
                          "--output", "o", "--batch-size", "16", "--embed-batch-size", "32"])
    assert ids.batch_size == 16  # the EMA's; the embedding batch is --embed-batch-size
    assert EmbedOptions.from_args(ids, batch_size_flag="--embed-batch-size") == EmbedOptions(batch_size=32)
    index = cli.parse_args(["index", "--model", "m", "--source", "s", "--output", "o", "--stride", "4"])
    assert EmbedOptions.from_args(index) == EmbedOptions(stride=4) and not hasattr(index, "num_workers")


def test_frames_split_and_checks():
    assert EmbedOptions(num_frames=2).frames(SimpleNamespace(num_frames=16)) == 2
    assert EmbedOptions().frames(SimpleNamespace(num_frames=16)) == 16
    assert EmbedOptions().frames(None) == DEFAULT_NUM_FRAMES
    options, rest = EmbedOptions.split({"num_frames": 4, "max_train_samples": 10})
    assert options == EmbedOptions(num_frames=4) and rest == {"max_train_samples": 10}
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        EmbedOptions(batch_size=0)


def test_place_refuses_to_compile_or_move_a_model_without_weights():
    """An ONNX export's sessions have no parameters: `.to("cuda")` and compile were silent no-ops."""
    import torch

    class Sessions(torch.nn.Module):  # what XrayOnnxModel is to torch: a module without parameters
        pass

    model = Sessions()
    assert EmbedOptions().place(model) is model and EmbedOptions(device="cpu").place(model) is model
    for options in (EmbedOptions(device="cuda"), EmbedOptions(compile=True)):
        with pytest.raises(ValueError, match="Sessions has no PyTorch weights to move to .* or compile"):
            options.place(model)

"""`torch_compile` through the trainers' TrainingArguments: static shapes, one graph per input size."""

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from xray_hf import XrayVisualConfig, XrayVisualForPreTraining
from xray_hf.trainers import MAETrainer, MAETrainingArguments


class Batches:
    """A stateful loader over fixed batches (what the trainers' streaming loaders provide)."""

    def __init__(self, batches):
        self.batches, self.position = batches, 0

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def set_epoch(self, epoch):
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_torch_compile_argument_compiles_once_per_resolution(tmp_path):
    torch._dynamo.reset()
    counters.clear()
    config = XrayVisualConfig.from_preset("tiny", decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                          decoder_num_attention_heads=4)
    sizes = [16, 24, 32, 16, 24, 32]  # a progressive-resolution schedule visited twice
    batches = [{"pixel_values": torch.randn(2, 3, size, size)} for size in sizes]
    args = MAETrainingArguments(output_dir=str(tmp_path), max_steps=len(sizes), report_to=[], save_strategy="no",
                                torch_compile=True, torch_compile_backend="eager", optimizer="adamw",
                                disable_tqdm=True)
    trainer = MAETrainer(model=XrayVisualForPreTraining(config), args=args, train_loader=Batches(batches))
    result = trainer.train()
    try:
        assert result.global_step == len(sizes)
        assert counters["stats"]["unique_graphs"] == 3  # revisited sizes reuse their graph
    finally:
        torch._dynamo.reset()

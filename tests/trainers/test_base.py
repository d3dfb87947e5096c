import pytest
import torch

from xray_hf import XrayVisualConfig, XrayVisualForPreTraining
from xray_hf.trainers import MAETrainer, MAETrainingArguments


class ListLoader:
    """A minimal stateful loader: batches of one epoch, position in `state_dict`."""

    def __init__(self, batches):
        self.batches, self.position, self.epochs = batches, 0, []

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def set_epoch(self, epoch):
        self.epochs.append(epoch)
        self.position = 0

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.position = state["position"]


def test_resume_without_data_state_is_refused(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    config = XrayVisualConfig.from_preset("tiny", decoder_hidden_size=32, decoder_num_hidden_layers=1,
                                          decoder_num_attention_heads=4)
    args = MAETrainingArguments(output_dir=str(tmp_path), max_steps=2, report_to=[])
    trainer = MAETrainer(model=XrayVisualForPreTraining(config), args=args,
                         train_loader=ListLoader([{"pixel_values": torch.zeros(2, 3, 32, 32)}] * 2))
    with pytest.raises(ValueError, match="data position"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    with pytest.raises(ValueError, match="no checkpoint"):
        MAETrainer(model=XrayVisualForPreTraining(config),
                   args=MAETrainingArguments(output_dir=str(tmp_path / "empty"), report_to=[]),
                   train_loader=ListLoader([])).train(resume_from_checkpoint=True)

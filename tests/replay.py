"""Replaying a distributed run in one process: the batches each rank's trainer saw, recorded per step, joined into
the global batch of that step and fed to a one-process run (`ReplayLoader`), so its losses and weights can be
compared with the ranks'. Shared by the scale-out and pipeline tests."""

from __future__ import annotations

import torch


class ReplayLoader:
    """A stateful loader yielding recorded global batches (both ranks' batches, rank 0's rows first)."""

    def __init__(self, batches: list[dict]):
        self.batches, self.position = batches, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        while self.position < len(self.batches):
            self.position += 1
            yield self.batches[self.position - 1]

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = state["position"]


def union_batches(ranks: list[dict], skip: set[str] = frozenset()) -> list[dict]:
    """Per step, the concatenation of both ranks' recorded tensors (token tensors padded to one length). Each rank's
    record has `steps` (with `ids`) and `tensors` keyed `<step>.<batch key>`."""
    batches = []
    for step in range(len(ranks[0]["steps"])):
        keys = {k.split(".", 1)[1] for k in ranks[0]["tensors"] if k.split(".", 1)[0] == str(step)} - set(skip)
        batch = {}
        for key in sorted(keys):
            parts = [r["tensors"][f"{step}.{key}"] for r in ranks]
            if parts[0].ndim == 2 and not parts[0].is_floating_point() and key != "noise":
                width = max(p.shape[1] for p in parts)
                parts = [torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts]
            batch[key] = torch.cat(parts)
        batch["id"] = [i for r in ranks for i in r["steps"][step]["ids"]]
        batches.append(batch)
    return batches


def rank_mean_losses(ranks: list[dict]) -> list[float]:
    """Per step, the mean of the ranks' losses: the loss of the global batch."""
    return [sum(r["steps"][s]["loss"] for r in ranks) / len(ranks) for s in range(len(ranks[0]["steps"]))]

import pytest
import torch
import torch.nn.functional as F

from xray_hf.losses import simcse_loss

# -- simcse_loss --


def test_simcse_matches_a_direct_computation():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    sim = F.cosine_similarity(a[:, None], b[None], dim=-1) / 0.05
    expected_ab = -torch.log_softmax(sim, dim=1).diagonal().mean()
    expected_ba = -torch.log_softmax(sim.T, dim=1).diagonal().mean()
    assert torch.allclose(simcse_loss(a, b, symmetric=False), expected_ab, atol=1e-5)
    assert torch.allclose(simcse_loss(a, b), (expected_ab + expected_ba) / 2, atol=1e-5)


def test_simcse_is_low_for_aligned_pairs_and_fp32_for_bf16_inputs():
    torch.manual_seed(0)
    a = torch.randn(6, 16)
    aligned = simcse_loss(a.bfloat16(), (a + 0.01 * torch.randn_like(a)).bfloat16())
    shuffled = simcse_loss(a, a[torch.randperm(6)])
    assert aligned.dtype == torch.float32 and aligned < 0.01 < shuffled


def test_simcse_group_ids_drop_same_item_negatives():
    # rows 0 and 1 are two captions of the same item: row 1's positive must not count as row 0's negative
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    b = a.clone()
    without = simcse_loss(a, b, temperature=0.1, symmetric=False)
    with_groups = simcse_loss(a, b, temperature=0.1, group_ids=torch.tensor([7, 7, 3]), symmetric=False)
    assert with_groups < without
    assert with_groups < 1e-3


def test_simcse_bad_input_raises():
    with pytest.raises(ValueError, match="batch, dim"):
        simcse_loss(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        simcse_loss(torch.randn(3, 4), torch.randn(3, 4), temperature=0.0)
    with pytest.raises(ValueError, match="group_ids"):
        simcse_loss(torch.randn(3, 4), torch.randn(3, 4), group_ids=torch.arange(2))

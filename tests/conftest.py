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

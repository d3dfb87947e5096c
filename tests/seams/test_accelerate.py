"""accelerate's private names (`xray_hf.seams.accelerate`): `Accelerator.prepare_model` returns a model marked
prepared as it is (no DDP, no device placement, no autocast wrapper), which the FSDP2 path relies on."""

import subprocess
import sys
import textwrap

from xray_hf.seams.accelerate import SEAMS

CHECK = textwrap.dedent("""
    import torch
    from accelerate import Accelerator
    from xray_hf.seams.accelerate import mark_prepared

    accelerator = Accelerator(cpu=True, mixed_precision="bf16")  # bf16: prepare_model wraps forward in autocast
    marked, plain = mark_prepared(torch.nn.Linear(2, 2)), torch.nn.Linear(2, 2)
    assert accelerator.prepare_model(marked) is marked
    assert marked.forward.__func__ is torch.nn.Linear.forward, "accelerate wrapped a model marked prepared"
    accelerator.prepare_model(plain)
    assert getattr(plain.forward, "__func__", None) is not torch.nn.Linear.forward, "the control was not wrapped"
    print("ok")
""")


def test_a_model_marked_prepared_is_returned_unwrapped():
    """In a fresh process: accelerate's state is a process-wide singleton, and bf16 must not leak into other tests."""
    assert [seam.name for seam in SEAMS] == ["_is_accelerate_prepared"]
    proc = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), (
        f"accelerate no longer honours {SEAMS[0].name}: {SEAMS[0].purpose}\n{proc.stderr[-3000:]}")

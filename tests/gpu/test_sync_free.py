"""On a real GPU: a monitored loop adds no host-device synchronisation.

Skipped where torch sees no CUDA device (CI has none); run on a GPU machine.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_monitored_loop_runs_under_sync_debug_mode_error(tmp_path: Path) -> None:
    import gpuwatch
    from gpuwatch.instrument.attach import install
    from gpuwatch.monitor import start_agent

    lazy = install(start_agent)  # the zero-code hooks too (already-imported torch is patched now)
    monitor = gpuwatch.watch(out_dir=tmp_path, sample_interval_s=0.1)
    model = torch.nn.Linear(1024, 1024, device="cuda")
    opt = torch.optim.AdamW(model.parameters(), capturable=True)
    x = torch.randn(64, 1024, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(50):
            with monitor.step(samples=64):
                with monitor.phase("compute"):
                    loss = model(x).square().mean()
                    loss.backward()
                with monitor.phase("optimizer"):
                    opt.step()
                    opt.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    monitor.stop()
    assert monitor.agent.assembler.steps == 50
    assert lazy.loop_thread == threading.get_ident()  # its steps went through the hooks

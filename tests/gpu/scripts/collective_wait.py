"""One GPU, NCCL at world size 1: collective waits that only the device timeline shows.

``async``: a long matmul on a side stream delays an async all-reduce issued there;
the compute stream then waits for it (``Work.wait``). ``ddp``: a DDP model whose comm
hook delays its all-reduce the same way; backward's end waits for it. The host returns
from both waits at once (NCCL completes works at enqueue). Prints JSON: the exposed
wait gpuwatch measured, the host time around the waits, and the matmul's device time.
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import gpuwatch
from gpuwatch.instrument.attach import install
from gpuwatch.instrument.patches import COVERAGE
from gpuwatch.monitor import start_agent
from gpuwatch.records import Step, from_dict

STEPS = 30


def busy(a: torch.Tensor, n: int = 8) -> None:
    for _ in range(n):
        a = a @ a / a.shape[0]


def main(mode: str, out: Path) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    install(start_agent)
    dist.init_process_group("nccl", rank=0, world_size=1)
    torch.cuda.set_device(0)
    monitor = gpuwatch.watch(out_dir=out, sample_interval_s=0.1)
    side = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    x = torch.randn(1 << 20, device="cuda")
    busy(a)  # warm-up: cuBLAS's first call and the clocks' ramp made a cold one ~6x longer
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        busy(a)
    end.record()
    torch.cuda.synchronize()
    busy_s = start.elapsed_time(end) / 1000 / 5
    host_wait = 0.0
    if mode == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(
            torch.nn.Linear(1024, 1024, device="cuda"))

        def slow_allreduce(state: object, bucket: dist.GradBucket) -> torch.futures.Future:
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                busy(a)  # the all-reduce finishes late, as over a slow link
                work = dist.all_reduce(bucket.buffer(), async_op=True)
            return work.get_future().then(lambda fut: fut.value()[0])  # (DDP's: one tensor)

        model.register_comm_hook(None, slow_allreduce)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        inp = torch.randn(64, 1024, device="cuda")
        for _ in range(STEPS):
            with monitor.step(samples=64):
                loss = model(inp).square().mean()
                t0 = time.perf_counter()
                loss.backward()
                host_wait += time.perf_counter() - t0
                opt.step()
                opt.zero_grad()
    else:
        for _ in range(STEPS):
            with monitor.step(samples=1):
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    busy(a)
                    work = dist.all_reduce(x, async_op=True)
                t0 = time.perf_counter()
                work.wait()
                host_wait += time.perf_counter() - t0
                x.mul_(0.5)
    torch.cuda.synchronize()
    monitor.stop()
    steps = [r for p in out.glob("*.jsonl") for line in p.read_text().splitlines()
             if isinstance(r := from_dict(json.loads(line)), Step)]
    dist.destroy_process_group()
    print(json.dumps({"steps": len(steps), "collective_s": sum(s.collective_s for s in steps),
                      "host_wait_s": host_wait, "busy_s": busy_s,
                      "per_step": [round(s.collective_s, 4) for s in steps],
                      "coverage": dict(COVERAGE)}))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

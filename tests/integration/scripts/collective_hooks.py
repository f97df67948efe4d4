"""Run under torchrun (gloo, 2 ranks): the collective hooks on real torch code paths.

Prints one JSON line per rank: the marks the hooks pushed for FSDP2, all-to-all,
batch_isend_irecv, a blocking send and receive, gather and scatter, object collectives,
and a fullgraph-compiled functional collective.
"""

import json
import os
from collections import Counter

import torch
import torch.distributed as dist

from gpuwatch.instrument import ring
from gpuwatch.instrument.attach import install
from gpuwatch.instrument.patches import COVERAGE

marks = ring.MarkRing(1 << 16)
install(start=lambda: marks.push)

import torch.distributed._functional_collectives as funcol  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402


def drain() -> dict[str, float]:
    """Collective bytes, point-to-point bytes, waits timed (host clock: phase seconds or
    open/close) by kind."""
    out: Counter[str] = Counter()
    for code, _, value in marks.drain():
        if code == ring.COLLECTIVE_BYTES:
            out["bytes"] += value
        elif code == ring.P2P_BYTES:
            out["p2p_bytes"] += value
        elif code == ring.PHASE_SECONDS and value[0] == ring.COLLECTIVE:
            out["waits"] += 1
        elif code == -ring.COLLECTIVE:
            out["closed"] += 1
        elif code == ring.COLLECTIVE_DURATION:
            out["durations"] += 1
    return dict(out)


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    result: dict[str, object] = {"rank": rank}
    drain()

    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
    for layer in model:
        fully_shard(layer)
    fully_shard(model)
    model(torch.randn(4, 64)).sum().backward()
    result["fsdp2"] = drain()

    out = torch.empty(world * 256)
    work = dist.all_to_all_single(out, torch.ones(world * 256), async_op=True)
    work.wait()
    result["all_to_all"] = drain()

    peer = (rank + 1) % world
    ops = [dist.P2POp(dist.isend, torch.ones(1000), peer),
           dist.P2POp(dist.irecv, torch.empty(1000), (rank - 1) % world)]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    result["p2p"] = drain()

    if rank == 0:
        dist.send(torch.ones(500), 1)
    elif rank == 1:
        dist.recv(torch.empty(500), 0)
    result["send_recv"] = drain()

    gathered = [torch.empty(100) for _ in range(world)] if rank == 0 else None
    dist.gather(torch.ones(100), gathered, dst=0)
    dist.scatter(torch.empty(100), [torch.ones(100)] * world if rank == 0 else None, src=0)
    result["rooted"] = drain()
    objects: list[object] = [None] * world
    dist.all_gather_object(objects, {"rank": rank})
    dist.broadcast_object_list([{"from": 0}], src=0)
    result["objects"] = drain()

    def f(x: torch.Tensor) -> torch.Tensor:
        return funcol.all_reduce(x * 2, "sum", group=dist.group.WORLD) + 1

    compiled = torch.compile(f, backend="eager", fullgraph=True)(torch.ones(8))
    result["compiled_ok"] = bool(torch.equal(compiled, torch.full((8,), 2.0 * world + 1)))
    drain()
    eager = f(torch.ones(8))
    result["funcol"] = drain() | {"ok": bool(torch.equal(eager, compiled))}
    result["coverage"] = dict(COVERAGE)
    # one write per line: two ranks share the pipe, and print's separate newline write
    # could interleave their lines
    os.write(1, (json.dumps(result) + "\n").encode())
    dist.barrier()  # (neither rank tears the group down while the other still uses it)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

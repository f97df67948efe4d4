"""DDP (gloo, one rank) whose own comm hook goes in after a first forward (a dry run to
check shapes): ``python``, ``builtin`` (``_register_builtin_comm_hook``) or ``twice``
(a second hook, which DDP refuses with or without gpuwatch). Prints a JSON line: the
steps trained, the job's hook's calls, the error a second registration raised, and how
many of three more DDP models, trained a step and let go, outlive a collection.

    python ddp_hook_after_forward.py MODE PORT
"""

import gc
import json
import os
import sys
import weakref

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

mode, port = sys.argv[1], sys.argv[2]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
dist.init_process_group("gloo", rank=0, world_size=1)
model = DistributedDataParallel(torch.nn.Linear(8, 8))
with torch.no_grad():
    model(torch.randn(2, 8))  # the dry run
calls = 0


def counted(state, bucket):  # type: ignore[no-untyped-def]
    global calls
    calls += 1
    return default_hooks.allreduce_hook(state, bucket)


error = None
if mode == "builtin":
    model._register_builtin_comm_hook(dist.BuiltinCommHookType.ALLREDUCE)
else:
    model.register_comm_hook(None, counted)
if mode == "twice":
    try:
        model.register_comm_hook(None, counted)
    except RuntimeError as exc:
        error = str(exc).splitlines()[0]
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(10):
    model(torch.randn(2, 8)).sum().backward()
    opt.step()
    opt.zero_grad()
let_go = []
for _ in range(3):
    other = DistributedDataParallel(torch.nn.Linear(8, 8))
    other(torch.randn(2, 8)).sum().backward()
    let_go.append(weakref.ref(other))
    del other
gc.collect()
alive = sum(ref() is not None for ref in let_go)
dist.destroy_process_group()
print(json.dumps({"steps": 10, "calls": calls, "error": error, "alive": alive}))

"""The corpus: realistic training jobs, each with its story, the verdicts a senior
ML-infrastructure engineer would give and the ones that would be wrong.

``expected`` is the whole answer: ``gpuwatch analyze`` must give exactly these
(detector, verdict) pairs, on the named ranks and at the named severity where
given. ``wrong`` names the false alarms the job is built to tempt (documentation
and a second check: none of them may appear).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from tests.scenarios.simulate import (
    L40S,
    RTX_5090,
    Evals,
    Memory,
    Saves,
    Shape,
    Stop,
)


@dataclass(frozen=True)
class Verdict:
    """One finding a job should (or should not) get. ``ranks``/``severity``: None = any."""

    detector: str
    verdict: str
    ranks: tuple[int, ...] | None = None
    severity: str | None = None


@dataclass(frozen=True)
class Job:
    name: str
    story: str
    shape: Shape
    expected: tuple[Verdict, ...]
    wrong: tuple[Verdict, ...]
    settings: dict[str, Any] = field(default_factory=dict)  # gpuwatch settings of the run


H100_HEALTHY = Memory(reserved_gb=52, allocated_gb=30)
# DDP on 4 H100s, 1 s steps, 25 minutes: the base of the jobs where one rank works alone
DDP_FOUR = Shape(step_s=1.0, duration_s=1500, world=4, collective_share=0.05,
                 collective_bytes=int(2e9), memory=Memory(60, 35))
MOVE = "move_to_h100"
FIX = "fix_here"

JOBS: tuple[Job, ...] = (
    Job("vision_small_steps",
        "ResNet-50 fine-tune on one H100, 50 ms steps, healthy: nothing to say.",
        Shape(step_s=0.05, duration_s=300, memory=H100_HEALTHY),
        expected=(),
        wrong=(Verdict("underutilised", "info"), Verdict("data_starvation", FIX))),
    Job("llm_pretrain_starved_loader",
        "7B pre-train on 8 H100s, 2 s steps, each rank waits 45% of the step on a slow "
        "tokenising loader: fix the loader here.",
        Shape(step_s=2.0, duration_s=240, world=8, data_share=0.45, collective_share=0.05,
              collective_bytes=int(1.4e9), workers=4, workers_cpu=0.97, utilization=0.8,
              memory=Memory(70, 40)),
        expected=tuple(Verdict("data_starvation", FIX, (r,)) for r in range(8)),
        wrong=(Verdict("underutilised", "info"), Verdict("sync_bottleneck", MOVE),
               Verdict("fits_on_paper", MOVE))),
    Job("llm_pretrain_periodic_eval",
        "13B pre-train on 4 H100s, 4 s steps, a 150 s eval every 10 minutes: evals are "
        "progress, not hangs or starvation.",
        Shape(step_s=4.0, duration_s=1500, world=4, collective_share=0.04,
              collective_bytes=int(2.6e9), evals=Evals(every_s=600, seconds=150),
              memory=Memory(68, 40)),
        expected=(),
        wrong=(Verdict("hang", FIX), Verdict("data_starvation", FIX),
               Verdict("underutilised", "info"))),
    Job("llm_periodic_eval_old_log",
        "The same eval rhythm in a log from before progress records (GPU busy during "
        "eval is the only sign of life): still no hang.",
        Shape(step_s=3.0, duration_s=900, evals=Evals(every_s=300, seconds=180),
              progress_records=False, memory=Memory(60, 35), seed=3),
        expected=(),
        wrong=(Verdict("hang", FIX),)),
    Job("hourly_blocking_save",
        "1.3B pre-train, 1.5 s steps, one 60 s blocking save an hour (about 2% of wall "
        "time): neither a hang nor a checkpoint problem.",
        Shape(step_s=1.5, duration_s=7500, saves=Saves(every_s=3600, blocking_s=60,
                                                      nbytes=int(26e9)),
              memory=H100_HEALTHY, sample_s=2.0),
        expected=(),
        wrong=(Verdict("hang", FIX), Verdict("checkpoint_overhead", FIX))),
    Job("frequent_blocking_saves",
        "Fine-tune saving a 6 GB checkpoint every 40 s of training, 8 s each: a fifth of "
        "wall time lost to saves, fix here.",
        Shape(step_s=0.3, duration_s=400, saves=Saves(every_s=40, blocking_s=8,
                                                     nbytes=int(6e9)),
              memory=H100_HEALTHY),
        expected=(Verdict("checkpoint_overhead", FIX, (0,)),),
        wrong=(Verdict("hang", FIX), Verdict("fits_on_paper", MOVE))),
    Job("ddp_rank0_saves",
        "DDP on 4 H100s, 1 s steps; rank 0 alone writes an 80 GB checkpoint every 10 "
        "minutes (150 s, `if rank == 0: torch.save`) while the others wait in the next "
        "all-reduce: a fifth of the job's time lost to blocking saves, no hang.",
        replace(DDP_FOUR, saves=Saves(every_s=600, blocking_s=150, nbytes=int(80e9),
                                      ranks=(0,))),
        expected=(Verdict("checkpoint_overhead", FIX, (0,)),),
        wrong=(Verdict("hang", FIX), Verdict("sync_bottleneck", MOVE),
               Verdict("straggler", FIX))),
    Job("ddp_rank0_eval",
        "DDP on 4 H100s, 1 s steps; rank 0 alone runs a 150 s eval every 10 minutes "
        "(`if rank == 0: evaluate()`) while the others wait in the next all-reduce: "
        "progress on rank 0, no hang anywhere.",
        replace(DDP_FOUR, evals=Evals(every_s=600, seconds=150, ranks=(0,))),
        expected=(),
        wrong=(Verdict("hang", FIX), Verdict("sync_bottleneck", MOVE),
               Verdict("straggler", FIX), Verdict("data_starvation", FIX))),
    Job("async_saves",
        "The same save rhythm with DCP async_save: 0.3 s staging blocks, the write runs "
        "in the background: nothing to fix.",
        Shape(step_s=0.3, duration_s=400, saves=Saves(every_s=40, blocking_s=0.3,
                                                     nbytes=int(6e9), background_s=8),
              memory=H100_HEALTHY),
        expected=(),
        wrong=(Verdict("checkpoint_overhead", FIX),)),
    Job("h100_checkpointing_by_design",
        "70B LoRA on an H100 at 92% memory with activation checkpointing by design, no "
        "retries, OOMs or batch cut: it already runs on the target card, no move.",
        Shape(step_s=1.2, duration_s=300, recompute_share=0.25,
              memory=Memory(reserved_gb=73.6, allocated_gb=41)),
        expected=(),
        wrong=(Verdict("fits_on_paper", MOVE), Verdict("iteration_speed", MOVE))),
    Job("h100_checkpointing_with_room",
        "Small model with activation checkpointing left on at 35% of an H100: at most "
        "the information that turning it off would save its recompute.",
        Shape(step_s=0.4, duration_s=240, recompute_share=0.2,
              memory=Memory(reserved_gb=28, allocated_gb=14)),
        expected=(Verdict("fits_on_paper", "info", (0,), "info"),),
        wrong=(Verdict("fits_on_paper", MOVE),)),
    Job("rtx5090_week_long_plan",
        "1B pre-train planned for 750k steps on one RTX 5090 at 0.8 s a step: a week "
        "here, hours on H100s: move.",
        Shape(step_s=0.8, duration_s=300, gpu=RTX_5090, total_steps=750_000,
              memory=Memory(24, 12)),
        expected=(Verdict("iteration_speed", MOVE, (0,)),),
        wrong=(Verdict("fits_on_paper", MOVE), Verdict("data_starvation", FIX))),
    Job("rtx5090_memory_bound_finetune",
        "8B fine-tune on an RTX 5090: a batch finder settles at 12 after an OOM at 16, "
        "allocator retries every minute, activation checkpointing: move, once.",
        Shape(step_s=1.0, duration_s=300, gpu=RTX_5090, recompute_share=0.2,
              batch_size=4, batch_sizes=((2, 8), (3, 16), (4, 12)),
              memory=Memory(reserved_gb=31.4, allocated_gb=17, retries_per_min=12,
                            oom_at_s=(3.0,))),
        expected=(Verdict("fits_on_paper", MOVE, (0,)),),
        wrong=(Verdict("fits_on_paper", FIX), Verdict("hang", FIX))),
    Job("finetune_eval_loader_old_log",
        "An older log whose batch-size events flip to the eval loader's 64 and back to the "
        "training loader's 16 at each eval, on a full L40S: an eval batch is not a cut, "
        "and the GPU busy through each eval (no eval batches in this log) is the job's "
        "own work, not a stall.",
        Shape(step_s=0.5, duration_s=400, gpu=L40S, batch_size=16,
              evals=Evals(every_s=60, seconds=20, batch_size=64), progress_records=False,
              memory=Memory(reserved_gb=44.5, allocated_gb=20)),
        expected=(),
        wrong=(Verdict("fits_on_paper", MOVE), Verdict("interruptions", FIX))),
    Job("slow_rank_of_four",
        "DDP on four RTX 5090s, 1.5 s steps, rank 2's GPU computes 2x slower and the "
        "others idle (45% utilisation) waiting for it: fix that rank, not the budget.",
        Shape(step_s=1.5, duration_s=240, world=4, gpu=RTX_5090, collective_share=0.08,
              collective_bytes=int(400e6), slow_rank=2, slow_factor=2.0, utilization=0.8,
              memory=Memory(22, 12)),
        expected=(Verdict("straggler", FIX, (2,)),),
        wrong=(Verdict("sync_bottleneck", MOVE), Verdict("underutilised", "info"))),
    Job("one_rank_starved_by_its_loader",
        "DDP on 8 H100s (NVLink), 2 s steps; rank 6's loader (a slow disk on its host) "
        "makes it wait 28% of each step for data, under the starvation threshold, and "
        "the other seven wait as long in the all-reduce: fix rank 6's loader.",
        Shape(step_s=2.0, duration_s=240, world=8, collective_share=0.05,
              collective_bytes=int(1.4e9), slow_rank=6, slow_data_share=0.28,
              memory=Memory(60, 35)),
        expected=(Verdict("straggler", FIX, (6,)),),
        wrong=(Verdict("sync_bottleneck", MOVE), Verdict("sync_bottleneck", FIX),
               Verdict("underutilised", "info"))),
    Job("rank_slow_in_some_steps",
        "DDP on 8 H100s (NVLink), 1 s steps; in about a third of the steps rank 3 computes "
        "2.5x as long (its host's periodic job, its shard's long sequences) and the other "
        "seven wait for it; in the rest nobody waits. Rank 3 is last in only about half "
        "the steps but causes nearly all the waiting: fix rank 3.",
        Shape(step_s=1.0, duration_s=300, world=8, collective_share=0.05,
              collective_bytes=int(0.5e9), slow_rank=3, slow_factor=2.5, slow_steps=0.3,
              memory=Memory(60, 35)),
        expected=(Verdict("straggler", FIX, (3,)),),
        wrong=(Verdict("sync_bottleneck", MOVE), Verdict("sync_bottleneck", FIX))),
    Job("pcie_sync_bound",
        "DDP of a 1.5B model on 8 RTX 5090s over PCIe, 3 s steps, every rank waits 40% in "
        "the all-reduce of 3 GB: NVLink H100s would pay.",
        Shape(step_s=3.0, duration_s=240, world=8, gpu=RTX_5090, collective_share=0.4,
              collective_bytes=int(3e9), memory=Memory(26, 14)),
        expected=(Verdict("sync_bottleneck", MOVE),),
        wrong=(Verdict("straggler", FIX), Verdict("underutilised", "info"))),
    Job("pipeline_bubble_no_p2p",
        "A 4-stage 1F1B pipeline on 4 RTX 5090s without P2P, 1 s steps of 6 micro-batches: "
        "every stage idles 30% in its receives, the schedule's bubble, while the 400 MB of "
        "activations it sends would take 0.05 s even through host memory. More "
        "micro-batches, not NVLink.",
        Shape(step_s=1.0, duration_s=300, world=4, gpu=RTX_5090, collective_share=0.3,
              collective_bytes=int(400e6), p2p_bytes=int(400e6), memory=Memory(26, 14)),
        expected=(Verdict("sync_bottleneck", FIX),),
        wrong=(Verdict("sync_bottleneck", MOVE), Verdict("iteration_speed", MOVE))),
    Job("fsdp_16_ranks_long_steps",
        "FSDP pre-train on 16 H100s, 12 s steps with 8-way gradient accumulation: healthy.",
        Shape(step_s=12.0, duration_s=600, world=16, accumulation=8, collective_share=0.06,
              collective_bytes=int(8e9), memory=Memory(64, 38)),
        expected=(),
        wrong=(Verdict("hang", FIX), Verdict("sync_bottleneck", MOVE))),
    Job("starved_30s_steps",
        "Video model, 30 s steps of 8 micro-batches, 40% of each step waiting on video "
        "decoding: detectors must see it at 30 s a step.",
        Shape(step_s=30.0, duration_s=1200, accumulation=8, data_share=0.4, workers=6,
              workers_cpu=0.95, memory=Memory(60, 30)),
        expected=(Verdict("data_starvation", FIX, (0,)),),
        wrong=(Verdict("hang", FIX), Verdict("underutilised", "info"))),
    Job("nccl_hang",
        "4-rank job where rank 3 stops in Python and ranks 0-2 spin in an all-reduce "
        "(GPU pinned at 100% at low power): a real hang, critical.",
        Shape(step_s=0.5, duration_s=300, world=4, collective_share=0.05,
              collective_bytes=int(200e6), stop=Stop(at_s=120, ranks=(3,)),
              memory=H100_HEALTHY),
        expected=tuple(Verdict("hang", FIX, (r,), "critical") for r in range(4)),
        wrong=(Verdict("underutilised", "info"), Verdict("straggler", FIX))),
    Job("dataloader_deadlock",
        "A single-GPU job whose DataLoader deadlocks: waiting in data, CPU and GPU idle: "
        "a real hang.",
        Shape(step_s=0.2, duration_s=240, stop=Stop(at_s=100, ranks=(0,), kind="loader"),
              memory=H100_HEALTHY),
        expected=(Verdict("hang", FIX, (0,), "critical"),),
        wrong=(Verdict("data_starvation", FIX), Verdict("underutilised", "info"))),
    Job("torch_compile_recompile",
        "torch.compile'd model hits a new shape and recompiles for 100 s (CPU busy, GPU "
        "idle) mid-run: progress, not a hang.",
        Shape(step_s=0.2, duration_s=400, recompile_at_s=150, recompile_s=100,
              progress_records=False, memory=H100_HEALTHY),
        expected=(),
        wrong=(Verdict("hang", FIX),)),
    Job("epoch_restarts",
        "Small dataset, 0.1 s steps, every 5 minutes the DataLoader respawns its workers "
        "(12 s of data wait in one step): ordinary training life.",
        Shape(step_s=0.1, duration_s=700, epoch_every_s=300, epoch_restart_s=12,
              memory=H100_HEALTHY),
        expected=(),
        wrong=(Verdict("data_starvation", FIX), Verdict("hang", FIX))),
    Job("resumed_run",
        "A resumed pre-train (log starts at step 240001) on an H100 with a slow first "
        "step and 60k steps to go: healthy, and not worth a move.",
        Shape(step_s=0.9, duration_s=300, first_step=240_001, total_steps=300_000,
              memory=H100_HEALTHY),
        expected=(),
        wrong=(Verdict("iteration_speed", MOVE), Verdict("hang", FIX))),
    Job("underutilised_small_kernels",
        "Tiny MLP on an H100 launching small kernels: 25% utilisation that nothing "
        "else explains, worth an info.",
        Shape(step_s=0.05, duration_s=200, utilization=0.25, memory=Memory(6, 3)),
        expected=(Verdict("underutilised", "info", (0,)),),
        wrong=(Verdict("iteration_speed", MOVE), Verdict("fits_on_paper", MOVE))),
)


def job(name: str) -> Job:
    """The corpus job called ``name``."""
    for j in JOBS:
        if j.name == name:
            return j
    raise KeyError(f"no corpus job {name!r}; the corpus has " + ", ".join(j.name for j in JOBS))

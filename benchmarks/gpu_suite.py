"""The GPU proof suite: gpuwatch on real H100/H200 workloads, and what the GPU reports.

    python benchmarks/gpu_suite.py --out DIR            # on a GPU machine, about 5 minutes
    python benchmarks/gpu_suite.py --out DIR --smoke    # tiny sizes: the plumbing, on a CPU

Scenarios, each its own process under `gpuwatch run` (zero-code attach, as a user runs
it), with the verdicts a senior engineer expects of each (``EXPECTED``/``FORBIDDEN``):

- healthy: a ~180M GPT (d=1024, 12 layers, seq 1024, batch 16, bf16, fused AdamW):
  nothing to move or fix.
- consumer_card: an RTX 5090 emulated: memory capped at the catalogue's 32 GB with
  ``set_per_process_memory_fraction``, NVML off and ``gpu_model = "RTX 5090"`` (so the
  card is the catalogue's); a ~0.9B GPT whose batch 16 OOMs: the job halves the batch
  until it fits, then turns activation checkpointing on to get batch 16 back.
  ``fits_on_paper`` -> move.
- uncapped: the same ~0.9B model at batch 16 on the whole card, as NVML names it: no
  ``fits_on_paper``.
- starved: two DataLoader workers running a CPU-heavy transform, and an evaluation every
  50 steps over a loader of four persistent workers, idle between evaluations:
  ``data_starvation``, fix here, its 2 workers CPU-bound.
- checkpoint: model and optimizer ``torch.save`` every 10 steps: ``checkpoint_overhead``,
  fix here.

Checks: the project's GPU tests (tests/gpu), what NVML and GPM report on a matmul-bound,
a copy-bound and a launch-bound loop, the agent's overhead on a step (paired, median
ratio and spread) and ``gpuwatch doctor``. Results go to DIR/results.json as each part
ends; the run logs, gzipped, to DIR/fixtures/ (tests/data/gpu/ holds them, with replay
tests). In --smoke mode the sizes are too small for any bottleneck to show, NVML is a
fake and the GPU-only checks are skipped: it checks the plumbing.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONSUMER = "RTX 5090"
RUNS = ("healthy", "consumer_card", "uncapped", "starved", "checkpoint")
CHECKS = ("gpu_tests", "nvml_loops", "overhead", "doctor")
EXPECTED = {"healthy": set(), "consumer_card": {("fits_on_paper", "move_to_h100")},
            "uncapped": set(), "starved": {("data_starvation", "fix_here")},
            "checkpoint": {("checkpoint_overhead", "fix_here")}}
FORBIDDEN = {"healthy": {"move_to_h100", "fix_here"}, "consumer_card": set(),
             "uncapped": {"fits_on_paper"}, "starved": {"move_to_h100"},
             "checkpoint": {"move_to_h100"}}
SECONDS = {"healthy": 15.0, "consumer_card": 45.0, "uncapped": 15.0, "starved": 20.0,
           "checkpoint": 15.0}
EVAL_EVERY = 50  # steps between the starved run's evaluations


# -- the workloads (run in child processes, under gpuwatch run) -------------------------


def sizes(smoke: bool, big: bool = False) -> dict[str, int]:
    if smoke:
        return {"d": 64, "layers": 2, "seq": 64, "batch": 4, "vocab": 256}
    return {"d": 2048 if big else 1024, "layers": 16 if big else 12, "seq": 1024, "batch": 16,
            "vocab": 32000}


def gpt(torch: Any, d: int, layers: int, seq: int, vocab: int, **_: int) -> Any:
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
            self.heads = max(d // 128, 1)

        def forward(self, x: Any) -> Any:
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, -1).unbind(2)
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                               v.transpose(1, 2), is_causal=True)
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, d)
            self.pos = nn.Parameter(torch.zeros(1, seq, d))
            self.blocks = nn.ModuleList(Block() for _ in range(layers))
            self.head = nn.Linear(d, vocab, bias=False)
            self.checkpointing = False

        def forward(self, idx: Any) -> Any:
            x = self.emb(idx) + self.pos[:, : idx.shape[1]]
            for block in self.blocks:
                if self.checkpointing:
                    x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            return self.head(x)

    return GPT()


def train(torch: Any, model: Any, opt: Any, batch: int, s: dict[str, int], seconds: float,
          device: str, steps: int = 0) -> float:
    """Train on random tokens; returns samples per second."""
    start, done = time.perf_counter(), 0
    while (time.perf_counter() - start < seconds) if not steps else done < steps:
        tokens = torch.randint(0, s["vocab"], (batch, s["seq"] + 1), device=device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, s["vocab"]).float(),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += 1
    if device == "cuda":
        torch.cuda.synchronize()  # the workload's own measurement, outside gpuwatch
    return done * batch / (time.perf_counter() - start)


def workload(name: str, smoke: bool, out: Path) -> dict[str, Any]:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    seconds = 4.0 if smoke else SECONDS[name]
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device == "cuda"
                              else "cpu", "torch": torch.__version__}
    if name in ("healthy", "checkpoint"):
        s = sizes(smoke)
        model = gpt(torch, **s).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        if name == "healthy":
            result["samples_per_s"] = train(torch, model, opt, s["batch"], s, seconds, device)
        else:
            start, step = time.perf_counter(), 0
            while time.perf_counter() - start < seconds:
                train(torch, model, opt, s["batch"], s, 0, device, steps=1)
                step += 1
                if step % 10 == 0:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict()},
                               out / "checkpoint.pt")
            (out / "checkpoint.pt").unlink(missing_ok=True)
            result["steps"] = step
    elif name in ("consumer_card", "uncapped"):
        result.update(big_model(torch, smoke, device, seconds, name == "consumer_card"))
    else:
        result.update(starved(torch, smoke, device, seconds))
    return result


def big_model(torch: Any, smoke: bool, device: str, seconds: float,
              capped: bool) -> dict[str, Any]:
    """The ~0.9B GPT at batch 16; ``capped``: on the emulated consumer card, as a team
    makes it fit (halve the batch on OOM, then activation checkpointing)."""
    s = sizes(smoke, big=True)
    if capped and device == "cuda":
        from gpuwatch.detection.catalogue import catalogue, identify

        card = identify(CONSUMER, catalogue())
        assert card is not None
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(card.memory_bytes / total, 1.0))
    model = gpt(torch, **s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    if not capped:
        return {"samples_per_s": train(torch, model, opt, s["batch"], s, seconds, device)}
    batch, cuts = s["batch"], []
    while batch >= 1:  # what a team does: halve the batch until it fits
        try:
            train(torch, model, opt, batch, s, 0, device, steps=3)
            break
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            cuts.append(batch)
            batch //= 2
    fitted = train(torch, model, opt, batch, s, seconds / 4, device)
    model.checkpointing = True  # ... then activation checkpointing to get the batch back
    checkpointed = train(torch, model, opt, s["batch"], s, seconds * 3 / 4, device)
    return {"batch_cuts": cuts, "fitted_batch": batch, "fitted_samples_per_s": fitted,
            "checkpointed_samples_per_s": checkpointed}


def starved(torch: Any, smoke: bool, device: str, seconds: float) -> dict[str, Any]:
    """A small model fed by two DataLoader workers whose transform is CPU-heavy (~4 ms a
    sample of pure Python): the step waits on the loader. Every ``EVAL_EVERY`` steps, an
    evaluation over a light loader of four persistent workers (idle in between: not
    the training loader's workers)."""
    from torch.utils.data import DataLoader, Dataset

    s = sizes(smoke)
    s["layers"] = 2

    class Heavy(Dataset):  # type: ignore[misc,type-arg]
        def __len__(self) -> int:
            return 1_000_000

        def __getitem__(self, i: int) -> Any:
            total = 0
            for k in range(60_000):  # a CPU-heavy transform (decoding, augmentation)
                total += k * k
            return torch.randint(0, s["vocab"], (s["seq"] + 1,))

    model = gpt(torch, **s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    class Light(Dataset):  # type: ignore[misc,type-arg]
        def __len__(self) -> int:
            return 4 * s["batch"]

        def __getitem__(self, i: int) -> Any:
            return torch.randint(0, s["vocab"], (s["seq"] + 1,))

    loader = DataLoader(Heavy(), batch_size=s["batch"], num_workers=2, persistent_workers=True)
    evals = DataLoader(Light(), batch_size=s["batch"], num_workers=4, persistent_workers=True)
    start, steps = time.perf_counter(), 0
    for tokens in loader:
        tokens = tokens.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, s["vocab"]).float(),
                                                     tokens[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steps += 1
        if steps % EVAL_EVERY == 0:
            with torch.no_grad():
                for batch in evals:
                    model(batch.to(device)[:, :-1])
        if time.perf_counter() - start > seconds:
            break
    return {"steps": steps}


# -- checks in this process --------------------------------------------------------------


def gpu_tests(out: Path) -> dict[str, Any]:
    """The project's own GPU tests (sync-free loop, allocator, event timing, NCCL)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           str(ROOT / "tests" / "gpu")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    (out / "gpu_tests.txt").write_text(proc.stdout + proc.stderr)
    return {"exit": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


def doctor(out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "gpuwatch", "doctor"], capture_output=True,
                          text=True, timeout=120)
    (out / "doctor.txt").write_text(proc.stdout + proc.stderr)
    return {"exit": proc.returncode}


def loops(torch: Any, device: str) -> dict[str, Callable[[], None]]:
    """One step of each loop: tensor-core-bound, copy-bound (DRAM), launch-bound."""
    n = 8192 if device == "cuda" else 256
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    src = torch.empty(1 << (30 if device == "cuda" else 20), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    tiny = torch.zeros(1, device=device)

    def matmul() -> None:
        for _ in range(20):
            a @ a

    def copy() -> None:
        for _ in range(20):
            dst.copy_(src)

    def launch() -> None:
        for _ in range(2000):
            tiny.add_(1)

    return {"matmul": matmul, "copy": copy, "launch": launch}


def nvml_loops(smoke: bool, seconds: float) -> dict[str, Any]:
    """What NVML and GPM report while each loop runs (the agent's own sampler, 4 Hz, the
    first readings of a loop dropped): the means of every key, each call's slowest time,
    and what the machine does not support."""
    import torch

    from gpuwatch.faults import FaultLog
    from gpuwatch.probes.nvml import Nvml, NvmlSampler, load_pynvml, visible_gpu_indices

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if smoke:
        sys.path.insert(0, str(ROOT))
        from tests.fakes import FakeNvml
        library: Any = FakeNvml()
    else:
        library = load_pynvml()
    faults = FaultLog()
    nvml = Nvml(library, faults)
    if not nvml.init():
        return {"skipped": "NVML did not start"}
    gpus = visible_gpu_indices(nvml, os.environ)[:1]
    sampler = NvmlSampler(nvml, gpus, 0, lambda: {os.getpid()}, pcie_interval_s=0.0)
    result: dict[str, Any] = {"gpm_supported": all(g.supported for g in sampler._gpm.values())}
    for name, step in loops(torch, device).items():
        kept = readings_while(sampler, step, seconds, torch, device)[4:]
        keys = sorted({k for r in kept for k in r})
        result[name] = {k: statistics.fmean(r[k] for r in kept if k in r) for k in keys}
        result[name]["readings"] = len(kept)
    result["slowest_call_seconds"] = nvml.take_latencies()
    result["faults"] = dict(faults.counts)
    nvml.shutdown(5.0)
    return result


def readings_while(sampler: Any, step: Callable[[], None], seconds: float, torch: Any,
                   device: str) -> list[dict[str, float]]:
    """The sampler's readings, 4 a second, while ``step`` runs over and over."""
    readings: list[dict[str, float]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.wait(0.25):
            readings.extend(s.values for s in sampler.sample(time.time(), time.monotonic()))

    step()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    reader = threading.Thread(target=read)
    reader.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        step()
        if device == "cuda":
            torch.cuda.synchronize()  # (the loop's own pacing, not gpuwatch's)
    stop.set()
    reader.join()
    return readings


def overhead(smoke: bool, pairs: int) -> dict[str, Any]:
    """The same training steps with and without an agent, in pairs whose order
    alternates: the median of the per-pair step-time ratios, and their spread."""
    import torch

    from gpuwatch.agent import Agent
    from gpuwatch.config import load_settings
    from gpuwatch.monitor import Monitor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = sizes(smoke)
    model = gpt(torch, **s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    steps = 5 if smoke else 15

    def block(monitor: Monitor | None) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            if monitor is None:
                train(torch, model, opt, s["batch"], s, 0, device, steps=1)
            else:
                with monitor.step(samples=s["batch"]):
                    train(torch, model, opt, s["batch"], s, 0, device, steps=1)
        return (time.perf_counter() - start) / steps

    block(None)  # warm-up
    ratios, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(pairs):
            agent = Agent(load_settings(out_dir=Path(tmp) / f"run{i}", exporter={"enabled": False}))
            monitor = Monitor(agent)
            agent.start()
            first, second = (None, monitor) if i % 2 == 0 else (monitor, None)
            a, b = block(first), block(second)
            agent.stop()
            with_agent, without = (b, a) if i % 2 == 0 else (a, b)
            ratios.append(with_agent / without)
            bare.append(without)
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"pairs": pairs, "steps_per_arm": steps, "median_ratio": statistics.median(ratios),
            "iqr": [q[0], q[2]], "min_max": [min(ratios), max(ratios)],
            "median_step_s_without": statistics.median(bare)}


# -- the orchestrator -----------------------------------------------------------------


def run_scenario(name: str, out: Path, smoke: bool) -> dict[str, Any]:
    run_dir = out / name
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    env["GPUWATCH_EXPORTER__FINAL_SCRAPE_S"] = "0"
    env["GPUWATCH_JOB"] = name
    if name == "consumer_card":  # NVML off: the card is the catalogue's 5090
        env.update(GPUWATCH_NVML="false", GPUWATCH_GPU_MODEL=CONSUMER)
    cmd = [sys.executable, "-m", "gpuwatch", "run", "--out", str(run_dir), "--", sys.executable,
           __file__, "--workload", name, "--out", str(run_dir)] + (["--smoke"] if smoke else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    result: dict[str, Any] = {"seconds": round(time.perf_counter() - start, 1),
                              "exit": proc.returncode, "stderr": proc.stderr[-1500:]}
    fixtures = out / "fixtures"
    fixtures.mkdir(exist_ok=True)
    for log in run_dir.glob("run*.jsonl*"):
        target = fixtures / (f"{name}-{log.name}" + ("" if log.suffix == ".gz" else ".gz"))
        with log.open("rb") as src, (open(target, "wb") if log.suffix == ".gz"
                                     else gzip.open(target, "wb")) as dst:
            shutil.copyfileobj(src, dst)
    if (run_dir / "workload.json").exists():
        result.update(json.loads((run_dir / "workload.json").read_text()))
    if not (run_dir / "findings.json").exists():
        return result
    findings = json.loads((run_dir / "findings.json").read_text())
    result["findings"] = [[f["detector"], f["verdict"], f["summary"][:300]] for f in findings]
    found = {(f["detector"], f["verdict"]) for f in findings if f["verdict"] != "info"}
    bad = {d for d in found if d[0] in FORBIDDEN[name] or d[1] in FORBIDDEN[name]}
    result["as_expected"] = EXPECTED[name] <= found and not bad
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check the plumbing on CPU")
    p.add_argument("--only", nargs="*", choices=RUNS + CHECKS)
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--workload", choices=RUNS, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workload:  # a child process, under gpuwatch run
        result = workload(args.workload, args.smoke, args.out)
        (args.out / "workload.json").write_text(json.dumps(result))
        return
    results: dict[str, Any] = {}
    for name in args.only or RUNS + CHECKS:
        started = time.perf_counter()
        try:
            if name in RUNS:
                results[name] = run_scenario(name, args.out, args.smoke)
            elif name == "gpu_tests":
                results[name] = gpu_tests(args.out)
            elif name == "nvml_loops":
                results[name] = nvml_loops(args.smoke, 2.0 if args.smoke else 6.0)
            elif name == "overhead":
                results[name] = overhead(args.smoke, 3 if args.smoke else args.pairs)
            else:
                results[name] = doctor(args.out)
        except Exception as exc:  # (one part failing must not lose the others' results)
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[name]["wall_s"] = round(time.perf_counter() - started, 1)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
        print(f"{name:<15} {json.dumps(results[name], default=str)[:600]}", flush=True)


if __name__ == "__main__":
    main()

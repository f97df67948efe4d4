"""The GPU scenario suite (issue 7): gpuwatch on real H100/H200 workloads.

    python benchmarks/gpu_suite.py --out gpu-suite          # on a GPU machine, ~8 min
    python benchmarks/gpu_suite.py --out /tmp/s --smoke     # tiny sizes, runs on a CPU

Each scenario runs as its own process under `gpuwatch run` (zero-code attach, as a
user would run it); the suite then reads each run's findings.json and prints a
results table last (also written to DIR/results.json):

1. healthy: GPT ~180M (d=1024, 12 layers, seq 1024, batch 16, bf16, fused AdamW),
   expect no move_to_h100 / fix_here.
2. fits_on_paper: an RTX 5090's 32 GiB emulated with
   set_per_process_memory_fraction; a ~0.9B GPT (d=2048, 16 layers) whose batch
   16 OOMs; the job halves the batch until it fits, then turns activation
   checkpointing on to get batch 16 back, then runs uncapped without it.
   Expect fits_on_paper / move_to_h100; the projected speedup is compared with
   the measured uncapped / capped throughput.
3. starved: a CPU-heavy transform with num_workers=0, then 8: data_starvation
   in the first phase only.
4. checkpoint: full model + optimizer torch.save every 10 steps:
   checkpoint_overhead.
5. zero_sync: a monitored loop under torch.cuda.set_sync_debug_mode("error").
6. overhead: healthy steps with and without an agent, interleaved, >= 20 pairs.
7. nvml: per-call latency of every NVML function the agent uses, GPM support.

The run logs of 1-4 are gzipped into DIR/fixtures/ for tests/data. In --smoke
mode the sizes are too small for the memory and checkpoint scenarios to show
their bottleneck, and the GPU-only checks are skipped: it checks the plumbing.
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
import time
from pathlib import Path
from typing import Any

SCENARIOS = ("healthy", "fits_on_paper", "starved", "checkpoint", "zero_sync", "overhead",
             "nvml")
EXPECTED = {"healthy": set(), "fits_on_paper": {("fits_on_paper", "move_to_h100")},
            "starved": {("data_starvation", "fix_here")},
            "checkpoint": {("checkpoint_overhead", "fix_here")}}


# -- the workloads (run in child processes) -------------------------------------------


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
    seconds = 5.0 if smoke else 30.0
    result: dict[str, Any] = {}
    if name in ("healthy", "checkpoint"):
        s = sizes(smoke)
        model = gpt(torch, **s).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
        if name == "healthy":
            result["samples_per_s"] = train(torch, model, opt, s["batch"], s, seconds, device)
        else:
            start = time.perf_counter()
            step = 0
            while time.perf_counter() - start < seconds:
                train(torch, model, opt, s["batch"], s, 0, device, steps=1)
                step += 1
                if step % 10 == 0:
                    torch.save({"model": model.state_dict(), "opt": opt.state_dict()},
                               out / "checkpoint.pt")
            result["steps"] = step
    elif name == "fits_on_paper":
        result = fits_on_paper(torch, smoke, device, seconds)
    elif name == "starved":
        result = starved(torch, smoke, device, seconds)
    return result


def fits_on_paper(torch: Any, smoke: bool, device: str, seconds: float) -> dict[str, Any]:
    s = sizes(smoke, big=True)
    if device == "cuda":
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(32 * 2**30 / total, 1.0))
    model = gpt(torch, **s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    batch, cuts = s["batch"], []
    while batch >= 1:  # what a team does: halve the batch until it fits
        try:
            train(torch, model, opt, batch, s, 0, device, steps=3)
            break
        except torch.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            cuts.append(batch)
            batch //= 2
    train(torch, model, opt, batch, s, seconds / 3, device)
    model.checkpointing = True  # ... then activation checkpointing to get the batch back
    capped = train(torch, model, opt, s["batch"], s, seconds / 2, device)
    if device == "cuda":
        torch.cuda.set_per_process_memory_fraction(1.0)
    model.checkpointing = False
    uncapped = train(torch, model, opt, s["batch"], s, seconds / 3, device)
    return {"batch_cuts": cuts, "fitted_batch": batch, "capped_samples_per_s": capped,
            "uncapped_samples_per_s": uncapped, "measured_speedup": uncapped / capped}


def starved(torch: Any, smoke: bool, device: str, seconds: float) -> dict[str, Any]:
    from torch.utils.data import DataLoader, Dataset

    s = sizes(smoke)
    s["layers"] = 2

    class Heavy(Dataset):  # type: ignore[misc,type-arg]
        def __len__(self) -> int:
            return 1_000_000

        def __getitem__(self, i: int) -> Any:
            x = torch.randn(64, 64)
            for _ in range(20):  # a CPU-heavy transform
                x = torch.tanh(x @ x.T / 64)
            return torch.randint(0, s["vocab"], (s["seq"] + 1,))

    model = gpt(torch, **s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    phases = {}
    for workers in (0, 8 if not smoke else 2):
        loader = DataLoader(Heavy(), batch_size=s["batch"], num_workers=workers)
        phases[workers] = time.time()
        start = time.perf_counter()
        for tokens in loader:
            tokens = tokens.to(device)
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, s["vocab"]),
                                                     tokens[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad()
            if time.perf_counter() - start > seconds / 2:
                break
    return {"phase_start": phases}


# -- in-process checks ----------------------------------------------------------------


def zero_sync() -> dict[str, Any]:
    """The project's own GPU tests (a monitored loop under sync debug mode "error")."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", str(root / "tests/gpu")],
                          cwd=root, capture_output=True, text=True)
    return {"exit": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


def overhead(smoke: bool, pairs: int) -> dict[str, Any]:
    import torch

    from gpuwatch.agent import Agent
    from gpuwatch.config import load_settings
    from gpuwatch.monitor import Monitor

    device = "cuda" if torch.cuda.is_available() else "cpu"
    s = sizes(smoke)
    model = gpt(torch, **s).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    steps = 5 if smoke else 20

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
    ratios = []
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
    mean = statistics.fmean(ratios)
    half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
    return {"pairs": pairs, "overhead_ratio": mean, "ci95": [mean - half, mean + half]}


def nvml_facts() -> dict[str, Any]:
    from gpuwatch.faults import FaultLog
    from gpuwatch.probes.nvml import Nvml, NvmlSampler, load_pynvml, visible_gpu_indices

    nvml = Nvml(load_pynvml(), FaultLog())
    if not nvml.init():
        return {"skipped": "no NVML"}
    gpus = visible_gpu_indices(nvml, {})[:1]
    sampler = NvmlSampler(nvml, gpus, 0, lambda: {os.getpid()}, pcie_interval_s=0.0)
    values: dict[str, float] = {}
    for i in range(20):
        (sample,) = sampler.sample(time.time(), float(i)) or [None]
        if sample is not None:
            values = sample.values
        time.sleep(0.05)
    latencies = nvml.take_latencies()
    handle = nvml.call("nvmlDeviceGetHandleByIndex", gpus[0]) if gpus else None
    support = nvml.call("nvmlGpmQueryDeviceSupport", handle)
    nvml.shutdown()
    return {"slowest_call_seconds": latencies, "gpm_supported":
            bool(getattr(support, "isSupportedDevice", 0)), "last_values": values}


# -- the orchestrator -----------------------------------------------------------------


def run_scenario(name: str, out: Path, smoke: bool) -> dict[str, Any]:
    run_dir = out / name
    env = dict(os.environ)
    if name == "fits_on_paper":  # the projection compares like with like: the same H100
        env.setdefault("GPUWATCH_GPU_MODEL", "H100 SXM")
    cmd = [sys.executable, "-m", "gpuwatch", "run", "--out", str(run_dir), "--", sys.executable,
           __file__, "--workload", name, "--out", str(run_dir)] + (["--smoke"] if smoke else [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    result: dict[str, Any] = {"seconds": time.perf_counter() - start, "exit": proc.returncode}
    if proc.returncode != 0:
        result["stderr"] = proc.stderr[-2000:]
        return result
    result.update(json.loads((run_dir / "workload.json").read_text()))
    fixtures = out / "fixtures"  # the real telemetry, for tests/data (issue 7)
    fixtures.mkdir(exist_ok=True)
    for log in run_dir.glob("run*.jsonl"):
        with log.open("rb") as src, gzip.open(fixtures / f"{name}-{log.name}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    findings = json.loads((run_dir / "findings.json").read_text())
    found = {(f["detector"], f["verdict"]) for f in findings if f["verdict"] != "info"}
    result["found"] = sorted(found)
    result["as_expected"] = found == EXPECTED[name]
    projections = [f["projection"] for f in findings if f.get("projection")]
    if projections:
        result["projected_speedup"] = projections[0]["speedup_ratio"]
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: check the plumbing on CPU")
    p.add_argument("--only", nargs="*", choices=SCENARIOS)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--workload", choices=list(EXPECTED), help=argparse.SUPPRESS)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.workload:  # a child process, under gpuwatch run
        result = workload(args.workload, args.smoke, args.out)
        (args.out / "workload.json").write_text(json.dumps(result))
        return
    results: dict[str, Any] = {}
    for name in args.only or SCENARIOS:
        if name in EXPECTED:
            results[name] = run_scenario(name, args.out, args.smoke)
        elif name == "zero_sync":
            results[name] = zero_sync()
        elif name == "overhead":
            results[name] = overhead(args.smoke, 3 if args.smoke else args.pairs)
        else:
            results[name] = nvml_facts()
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"{'scenario':<15} result")
    for name, r in results.items():
        print(f"{name:<15} {json.dumps(r, default=str)[:200]}")


if __name__ == "__main__":
    main()

"""``gpuwatch report`` and ``gpuwatch compare`` on real runs, the page rendered in real
headless Chromium: no console error, no request beyond the file itself, every plot
drawn, verdicts first."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuwatch.agent import Agent
from gpuwatch.config import Settings
from gpuwatch.detection.projection import catalogue
from gpuwatch.monitor import Monitor
from gpuwatch.records import Finding, Step
from gpuwatch.runlog import RunLogReader
from gpuwatch.telemetry import WARMUP_STEPS
from tests.chromium import Browser, PageLoad, chromium_binary
from tests.fakes import FakeGpu, FakeNvml
from tests.integration.conftest import ROOT, gpuwatch_cmd, read, run

pytestmark = pytest.mark.integration
torch = pytest.importorskip("torch")
CHROMIUM = chromium_binary()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (scripts/test "
                                    "installs Debian's)")
EXAMPLES = ROOT / "examples"

# What the page holds, as the browser laid it out: each plot's size and drawn shapes,
# the sections in order, the verdict cards.
PAGE = """JSON.stringify({
  plots: Object.fromEntries([...document.querySelectorAll('svg[data-plot]')].map(s => {
    const r = s.getBoundingClientRect();
    return [s.dataset.plot, {width: r.width, height: r.height,
      shapes: s.querySelectorAll('polygon,polyline,rect').length,
      series: [...new Set([...s.querySelectorAll('[data-series]')].map(e => e.dataset.series))],
      markers: s.querySelectorAll('line.marker').length,
      limit: s.querySelectorAll('line.limit').length}];
  })),
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  findings: [...document.querySelectorAll('.finding')].map(f => f.dataset.detector),
  text: document.body.innerText
})"""


def render(path: Path) -> tuple[PageLoad, dict[str, Any]]:
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as browser:
        page = browser.load(path.resolve().as_uri(), PAGE)
    return page, json.loads(page.value)


def assert_clean(page: PageLoad, path: Path) -> None:
    assert page.errors == []
    assert page.requests == [path.resolve().as_uri()]  # opens from disk, fetches nothing


def assert_drawn(plot: dict[str, Any]) -> None:
    assert plot["width"] > 300 and plot["height"] > 80
    assert plot["shapes"] > 0


@needs_chromium
def test_the_checker_sees_errors_and_network_requests(tmp_path: Path) -> None:
    """The browser harness is not vacuous: a broken page is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text('<img src="http://example.com/x.png"><script>console.error("oops");'
                   'throw new Error("boom")</script>')
    assert CHROMIUM is not None
    with Browser(CHROMIUM) as browser:
        page = browser.load(bad.as_uri(), "1")
    assert "oops" in page.errors and any("boom" in e for e in page.errors)
    assert "http://example.com/x.png" in page.requests


@needs_chromium
def test_report_of_a_distributed_run_shows_collective_wait_per_rank(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable, "-m",
                            "torch.distributed.run", "--nproc-per-node", "2",
                            str(EXAMPLES / "distributed.py"), "--scenario", "straggler",
                            "--seconds", "12"),
               cwd=tmp_path, timeout=240, extra_env={"GPUWATCH_PEERS_INTERVAL_S": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = out / "report.html"
    assert f"gpuwatch: report in {report}" in proc.stderr  # `gpuwatch run` says where
    findings = json.loads((out / "findings.json").read_text())
    page, dom = render(report)
    assert_clean(page, report)
    assert dom["sections"][0] == "verdicts"
    assert dom["findings"] == [f["detector"] for f in findings] != []
    assert_drawn(dom["plots"]["phases"])
    assert {"compute", "collective"} <= set(dom["plots"]["phases"]["series"])
    bars = dom["plots"]["collectives"]
    assert_drawn(bars)
    assert bars["series"] == ["rank 0", "rank 1"]
    # the page's bars are the run logs' mean exposed collective wait per step
    waits = []
    for rank in (0, 1):
        steps = [r for r in read(out / f"run-rank{rank}.jsonl")
                 if isinstance(r, Step) and r.step > WARMUP_STEPS]
        waits.append(sum(s.collective_s for s in steps) / len(steps))
    assert waits[0] > 2 * waits[1]  # rank 1 is the straggler: rank 0 waits for it
    assert "No NVML samples" in dom["text"]


def gpu_run(out: Path, gpu: FakeGpu, steps: int, batch: int, **settings: Any) -> None:
    """A real CPU training loop under a real agent whose NVML is a fake GPU (passed in);
    the GPU's readings follow the loop (busy in compute, memory growing)."""
    s = Settings(out_dir=out, job="gpt-small", sample_interval_s=0.05, flush_interval_s=0.05,
                 exporter={"enabled": False}, **settings)  # type: ignore[arg-type]
    agent = Agent(s, nvml_library=FakeNvml([gpu]), memory_stats=None, environ={})
    monitor = Monitor(agent)
    agent.start()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(128, 256), torch.nn.ReLU(),
                                torch.nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(steps):
        with monitor.step(samples=batch):
            with monitor.phase("data"):
                x, y = torch.randn(batch, 128), torch.randint(0, 10, (batch,))
            with monitor.phase("compute"):
                gpu.util = 60 + i % 35
                loss = torch.nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
            with monitor.phase("optimizer"):
                opt.step()
            gpu.used = min(gpu.used + 2**24, gpu.total)
            if i % 100 == 99:
                path = out / "ckpt.pt"
                with monitor.checkpoint(path):
                    torch.save(model.state_dict(), path)
    agent.stop()


@needs_chromium
def test_report_shows_gpu_against_its_limit_projection_and_time_to_finish(
        tmp_path: Path) -> None:
    out = tmp_path / "run"
    gpu = FakeGpu(name="NVIDIA GeForce RTX 5090", total=32 * 2**30, used=8 * 2**30, nvlinks=0)
    gpu_run(out, gpu, steps=600, batch=64, total_steps=10**9)
    proc = run(gpuwatch_cmd("report", str(out)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = Path(proc.stdout.strip())
    assert report == out / "report.html"
    page, dom = render(report)
    assert_clean(page, report)
    assert dom["sections"] == ["verdicts", "phases", "gpu", "collectives", "checkpoints",
                               "projection", "finish"]
    plots = dom["plots"]
    assert set(plots) == {"phases", "gpu_utilization", "gpu_memory"}
    for plot in plots.values():
        assert_drawn(plot)
    saves = 6
    assert plots["phases"]["markers"] == saves  # checkpoint saves on the timeline
    assert plots["gpu_memory"]["limit"] == 1  # the card's limit, drawn
    assert "limit 34.4 GB" in dom["text"]
    assert "iteration_speed" in dom["findings"]
    assert "RTX 5090 → H100 SXM" in dom["text"]
    assert "Assumptions:" in dom["text"]
    assert "time to finish on H100 SXM" in dom["text"] and "cost to finish here" in dom["text"]


def test_compare_two_runs_per_sample_and_checks_the_projection(tmp_path: Path) -> None:
    """BEFORE on an 'RTX 5090' at batch 32 projects onto an H100; AFTER ran as an 'H100' at
    batch 128 (both on this CPU, the GPU named by gpu_model): compared per sample."""
    before, after = tmp_path / "before", tmp_path / "after"
    planned = "1000000000"
    for out, batch, env in (
            (before, "32", {"GPUWATCH_GPU_MODEL": "RTX 5090", "GPUWATCH_TOTAL_STEPS": planned}),
            (after, "128", {"GPUWATCH_GPU_MODEL": "H100 SXM"})):
        proc = run(gpuwatch_cmd("run", "--out", str(out), "--", sys.executable,
                                str(EXAMPLES / "plain_train.py"), "--steps", "300",
                                "--batch", batch, "--ckpt-every", "100"),
                   cwd=tmp_path, timeout=240, extra_env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(gpuwatch_cmd("compare", "--json", str(before), str(after)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    c = json.loads(proc.stdout)
    assert c["unit"] == "sample"
    assert c["before"]["gpu"] == "RTX 5090" and c["after"]["gpu"] == "H100 SXM"
    measured = {}
    for name, out in (("before", before), ("after", after)):
        steps = [r for r in RunLogReader(out / "run.jsonl")
                 if isinstance(r, Step) and r.step > WARMUP_STEPS]
        per_sample = sum(s.wall_s for s in steps) / sum(s.samples for s in steps)
        assert c[name]["seconds_per_unit"]["step"] == pytest.approx(per_sample)
        price = catalogue()[c[name]["gpu"]].price_per_hour
        assert c[name]["usd_per_unit"] == pytest.approx(price * per_sample / 3600)
        assert c[name]["memory_headroom_ratio"] is None  # no GPU memory measured on a CPU
        measured[name] = per_sample
    speedup = measured["before"] / measured["after"]
    assert c["speedup"]["step"] == pytest.approx(speedup)
    assert c["cost_ratio"] == pytest.approx(c["after"]["usd_per_unit"]
                                            / c["before"]["usd_per_unit"])
    promised = [Finding(**f) for f in json.loads((before / "findings.json").read_text())
                if (f.get("projection") or {}).get("target") == "H100 SXM"]
    assert promised, "BEFORE carried no projection onto the H100"
    p = c["projection"]
    assert p["target"] == "H100 SXM" and p["detector"] == promised[0].detector
    assert p["speedup_projected"] == pytest.approx(promised[0].projection["speedup_ratio"])
    assert p["speedup_measured"] == pytest.approx(speedup)
    assert p["error_ratio"] == pytest.approx(speedup / p["speedup_projected"] - 1)

    text = run(gpuwatch_cmd("compare", str(before), str(after)), cwd=tmp_path)
    assert text.returncode == 0 and "Compared per sample of work." in text.stdout
    assert "projected" in text.stdout and "H100 SXM" in text.stdout

    if CHROMIUM is not None:  # and as a section of AFTER's report
        proc = run(gpuwatch_cmd("report", str(after), "--compare", str(before)), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        page, dom = render(after / "report.html")
        assert_clean(page, after / "report.html")
        assert dom["sections"][-1] == "compare"
        assert "Compared with another run (per sample)" in dom["text"]


def test_compare_names_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = run(gpuwatch_cmd("compare", str(tmp_path / "empty"), str(tmp_path / "nope")),
               cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "gpuwatch:" in proc.stderr
    proc = run(gpuwatch_cmd("report", str(tmp_path / "empty")), cwd=tmp_path)
    assert proc.returncode == 2 and "no run*.jsonl run log" in proc.stderr

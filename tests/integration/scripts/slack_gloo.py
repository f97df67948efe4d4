"""One rank of a real gloo job under ``gpuwatch.watch()`` with Slack on: the agent's own
notifier and relay, over the job's c10d store. RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT come from the environment; argv: RUNDIR WEBHOOK_URL. The rank raises one
data_starvation finding through its agent, prints "told", and leaves when stdin closes."""

import sys
import time

import torch.distributed as dist

import gpuwatch
from gpuwatch.records import Finding

out, url = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", init_method="env://")
rank = dist.get_rank()
monitor = gpuwatch.watch(out_dir=out, exporter={"enabled": False}, peers_interval_s=0,
                         slack={"webhook_url": url, "group_window_s": 3})
deadline = time.monotonic() + 30
while monitor.agent.slack is None and time.monotonic() < deadline:
    time.sleep(0.05)
assert monitor.agent.slack is not None
monitor.agent.slack.notify([Finding(
    detector="data_starvation", verdict="fix_here", severity="warning",
    summary=f"Rank {rank} waits for data.", action="Add workers.",
    evidence={"data_share_ratio": 0.9}, ranks=[rank], first_seen=1.0, last_seen=1.0,
    fingerprint=f"starved-{rank}", job="gloo-job")])
print("told", flush=True)
sys.stdin.read()
monitor.stop()
dist.destroy_process_group()

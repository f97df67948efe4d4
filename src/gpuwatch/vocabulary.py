"""Names every layer shares: the GPU's clock-event reasons and throttle policies as
NVML reports them, read by the NVML probe, the detectors and the exporter alike.
"""

from __future__ import annotations

# NVML clock-event (throttle) reason bits -> bounded label values.
CLOCK_EVENT_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks_setting", 0x4: "sw_power_cap",
    0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown", 0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}

# NVML performance policies whose violation counters (cumulative ns of reduced
# clocks) are exported as throttle seconds, by reason.
THROTTLE_POLICIES = {
    "NVML_PERF_POLICY_POWER": "power", "NVML_PERF_POLICY_THERMAL": "thermal",
    "NVML_PERF_POLICY_SYNC_BOOST": "sync_boost", "NVML_PERF_POLICY_BOARD_LIMIT": "board_limit",
    "NVML_PERF_POLICY_LOW_UTILIZATION": "low_utilization",
    "NVML_PERF_POLICY_RELIABILITY": "reliability",
    "NVML_PERF_POLICY_TOTAL_APP_CLOCKS": "app_clocks",
    "NVML_PERF_POLICY_TOTAL_BASE_CLOCKS": "base_clocks",
}

"""The move gate, rule by rule, and what a step and a unit of work cost (rented or owned)."""

from __future__ import annotations

import json

import pytest

from gpuwatch.config import (
    ConfigError,
    OwnedGpu,
    Settings,
    detection_settings,
    load_settings,
    replay_settings,
)
from gpuwatch.detection.catalogue import catalogue
from gpuwatch.detection.engine import engine_from_settings
from gpuwatch.detection.moves import Costs, OwnedCard, decide, price, unknown_card
from gpuwatch.detection.projection import Inputs, Projection, StepParts, project, projection_text
from gpuwatch.records import Event, Finding, Record
from tests.runs import GB, START, judge, meta, only, samples, steps, topology

GPUS = catalogue()
STEP = StepParts(compute=1.0)


def proj(target: str, current: str | None, *, prices: dict[str, float] | None = None,
         **inputs: object) -> Projection:
    """A step of pure compute, the GPU measured busy throughout (NVML)."""
    gpus = catalogue(prices)
    return project(STEP, gpus[target], gpus[current] if current else None,
                   inputs=Inputs(**{"gpu_busy": 1.0, **inputs}))  # type: ignore[arg-type]


def test_a_move_that_costs_more_and_gains_little_is_not_recommended() -> None:
    """The issue's case: an H100 job told to move to an H200 at a higher cost per step."""
    p = proj("H200", "H100 SXM")
    assert p.speedup_low == pytest.approx(1.0, abs=0.01) and p.speedup_high > 1.4
    assert decide(p, Costs(), otherwise="info") == "info"
    d = p.as_dict()["decision"]
    assert d["rule"] is None and d["cheaper_at_low_end"] is False
    assert d["why"].startswith("the move does not pay: 1.00x at the low end, 1.40x the cost")


def test_a_move_to_the_card_the_job_runs_on_is_never_recommended() -> None:
    p = proj("H100 SXM", "H100 SXM", prices={"H100 SXM": 0.01})
    assert decide(p, Costs(), otherwise="fix_here", cannot_run_here="OOMs") == "fix_here"
    assert p.as_dict()["decision"]["why"] == "already on H100 SXM"


def test_a_job_that_cannot_run_here_moves_whatever_the_cost() -> None:
    p = proj("H100 SXM", "RTX 5090")
    costs = Costs(min_time_gain=10)
    assert decide(p, costs, otherwise="fix_here", cannot_run_here="3 OOMs, batch cut") == \
        "move_to_h100"
    assert p.as_dict()["decision"]["rule"] == "memory"
    assert "cannot run well here: 3 OOMs, batch cut" in p.as_dict()["decision"]["why"]


def test_cheaper_per_unit_at_the_low_end_is_a_move() -> None:
    p = proj("H100 SXM", "A100 SXM 80GB")  # 1.64x at the low end for 1.39x the price
    assert decide(p, Costs(min_time_gain=10), otherwise="info") == "move_to_h100"
    e = p.as_dict()
    assert e["decision"]["rule"] == "cheaper"
    assert e["cost_per_unit_target_worst_usd"] < e["cost_per_unit_now_usd"]
    assert e["cost_per_unit_target_worst_usd"] == pytest.approx(2.50 / 3600 / p.speedup_low)


def test_the_low_end_decides_not_the_middle() -> None:
    p = proj("H100 SXM", "RTX 5090", prices={"H100 SXM": 1.5})
    assert decide(p, Costs(min_time_gain=3), otherwise="info") == "info"
    e = p.as_dict()
    assert e["cost_per_unit_target_usd"] < e["cost_per_unit_now_usd"]  # the middle would say yes
    assert e["cost_per_unit_target_worst_usd"] > e["cost_per_unit_now_usd"]
    assert e["decision"]["cheaper_at_low_end"] is False


def test_a_time_to_result_gain_at_the_low_end_is_a_move_even_at_a_higher_cost() -> None:
    p = proj("H100 SXM", "RTX 5090")  # 1.87x at the low end, 3.6x the price per hour
    assert decide(p, Costs(min_time_gain=1.5), otherwise="info") == "move_to_h100"
    d = p.as_dict()["decision"]
    assert d["rule"] == "time" and d["time_gain_low_ratio"] == pytest.approx(p.speedup_low)
    p = proj("H100 SXM", "RTX 5090")
    assert decide(p, Costs(min_time_gain=2.0), otherwise="fix_here") == "fix_here"


def test_a_scale_out_alone_is_no_reason_to_change_cards() -> None:
    p = project(STEP, GPUS["H100 SXM"], GPUS["A100 SXM 80GB"], target_gpus=8, gpu_busy=1.0)
    p.economics.clear()
    assert decide(p, Costs(min_time_gain=1.5), otherwise="info") == "move_to_h100"
    assert p.as_dict()["decision"]["rule"] == "cheaper"  # card for card
    q = project(STEP, GPUS["H200"], GPUS["H100 SXM"], target_gpus=8, gpu_busy=1.0)
    assert decide(q, Costs(), otherwise="info") == "info"
    assert q.as_dict()["decision"]["time_gain_low_ratio"] == pytest.approx(q.speedup_low)


def test_another_form_of_the_same_model_must_be_clearly_cheaper() -> None:
    """H100 PCIe to H100 SXM: 1.31x at the low end for 1.36x the price per hour, 4%
    cheaper per unit of work: a job already on an H100 was told to move to an H100 for
    a saving well inside the projection's own error. A100 to H100, 6% cheaper, still
    moves: another model."""
    p = project(STEP, GPUS["H100 SXM"], GPUS["H100 PCIe"], gpu_busy=1.0)
    assert decide(p, Costs(), otherwise="info") == "info"
    d = p.as_dict()["decision"]
    assert d["cheaper_at_low_end"] is False and d["rule"] is None
    assert "10% lower cost, being another form of its model" in d["why"]
    cheap = proj("H100 SXM", "H100 PCIe", prices={"H100 SXM": 1.0})  # clearly cheaper
    assert decide(cheap, Costs(), otherwise="info") == "move_to_h100"
    other = proj("H100 SXM", "A100 SXM 80GB")
    assert decide(other, Costs(min_time_gain=10), otherwise="info") == "move_to_h100"


def test_a_gain_in_math_whose_gpu_utilisation_was_not_measured_is_no_move() -> None:
    """Without NVML's utilisation all compute counts as GPU-busy: the whole range is an
    upper bound, so no move rests on it; a gain on the link (collectives) still can."""
    math = project(STEP, GPUS["H100 SXM"], GPUS["RTX 5090"])
    assert decide(math, Costs(), otherwise="info") == "info"
    assert "GPU utilisation not measured" in math.as_dict()["decision"]["why"]
    link = project(StepParts(compute=0.2, comm=0.8, comm_bytes=8e9), GPUS["H100 SXM"],
                   GPUS["RTX 5090"], ranks=8)
    assert decide(link, Costs(), otherwise="fix_here") == "move_to_h100"


def test_no_move_to_a_card_that_cannot_hold_the_job_as_it_runs() -> None:
    """A job holding 90 GB on a 96 GB card would not load on an 80 GB H100, however much
    faster or cheaper its step would be there."""
    p = proj("H100 SXM", "RTX 5090", memory_bytes=90e9)
    assert decide(p, Costs(), otherwise="info") == "info"
    assert p.as_dict()["decision"]["why"] == (
        "the job holds 84 GiB today, more than H100 SXM holds (80 GiB): shard it first")
    held = proj("H100 SXM", "RTX 5090", memory_bytes=60e9)
    assert decide(held, Costs(), otherwise="info") == "move_to_h100"
    # 75 GB on an 80 GB A100, its size as NVML gives it (81,920 MiB): an H100's 80 GB
    # (as many bytes: a card's "GB" are binary) hold what the job holds today
    same = proj("H100 SXM", "A100 SXM 80GB", memory_bytes=75e9, card_bytes=81920 * 2**20)
    decide(same, Costs(), otherwise="info")
    assert "shard" not in same.as_dict()["decision"]["why"]


def test_a_gpu_idling_on_host_work_is_fixed_here_before_any_move() -> None:
    p = proj("H100 SXM", "RTX 5090", fix_first="underutilised")
    assert decide(p, Costs(), otherwise="info") == "info"
    assert "idles on host work" in p.as_dict()["decision"]["why"]
    assert decide(p, Costs(), otherwise="fix_here", cannot_run_here="OOMs") == "move_to_h100"


def test_a_job_on_the_configured_target_stays_whatever_bigger_card_is_projected() -> None:
    p = proj("H200", "H100 SXM", prices={"H200": 0.01})  # cheaper there: still no move
    assert decide(p, Costs(), otherwise="fix_here", cannot_run_here="OOMs",
                  configured=GPUS["H100 SXM"]) == "fix_here"
    assert p.as_dict()["decision"] == {**p.as_dict()["decision"], "verdict": "fix_here",
                                       "why": "already on H100 SXM"}
    # a card at least the target's (memory and math) stays too: an H200 or a B200 job
    for card, there in (("H200", "B200"), ("B200", "H100 SXM")):
        cheaper = proj(there, card, prices={there: 0.01})
        assert decide(cheaper, Costs(), otherwise="info", configured=GPUS["H100 SXM"]) == "info"
        assert cheaper.as_dict()["decision"]["why"] == f"already on {card}"
    smaller = proj("H100 SXM", "H100 PCIe", prices={"H100 SXM": 0.01})
    assert decide(smaller, Costs(), otherwise="info", configured=GPUS["H100 SXM"]) == \
        "move_to_h100"


def test_an_unknown_card_is_never_called_cheaper() -> None:
    p = proj("H100 SXM", None)
    assert decide(p, Costs(), otherwise="info") == "info"
    d = p.as_dict()
    assert "cost_per_unit_now_usd" not in d and d["decision"]["cheaper_at_low_end"] is None
    assert "the card was not seen" in d["decision"]["why"]
    named = proj("H100 SXM", None, device_name="Tesla V100-SXM2-32GB")
    decide(named, Costs(), otherwise="info")
    assert named.as_dict()["decision"]["why"].startswith(
        "Tesla V100-SXM2-32GB is not in gpuwatch's catalogue")


# -- what work costs -----------------------------------------------------------------------

def test_cost_per_million_tokens_and_time_to_finish() -> None:
    p = project(StepParts(compute=2.0), GPUS["H100 SXM"], GPUS["RTX 5090"], ranks=4,
                target_gpus=8, inputs=Inputs(units_per_step=4 * 8192, unit="1M tokens",
                                             remaining_steps=36_000))
    price(p, Costs())
    e = p.as_dict()
    assert e["unit"] == "1M tokens"
    assert e["cost_per_step_now_usd"] == pytest.approx(2.0 * 0.70 / 3600 * 4)
    assert e["cost_per_unit_now_usd"] == pytest.approx(e["cost_per_step_now_usd"] * 1e6 / 32768)
    assert e["hours_to_finish_now"] == pytest.approx(20.0)
    assert e["hours_to_finish_target_slowest"] == pytest.approx(
        36_000 * p.slowest.total / 2 / 3600)  # 8 GPUs for 4: half the steps' time
    assert "8 GPUs on H100 SXM for 4 now: data parallel, linear scaling" in e["assumptions"]
    assert f"{e['hours_to_finish_target_slowest']:.3g} h on 8 GPUs at the low end" in \
        projection_text(e)
    per_step = project(STEP, GPUS["H100 SXM"], GPUS["RTX 5090"])
    price(per_step, Costs())
    assert per_step.as_dict()["cost_per_unit_now_usd"] == per_step.as_dict()[
        "cost_per_step_now_usd"]
    assert "hours_to_finish_now" not in per_step.as_dict()


def test_an_owned_card_costs_its_power_and_amortisation() -> None:
    owned = Costs(owned={"RTX 5090": OwnedCard(2000.0, 4.0)}, electricity_usd_per_kwh=0.20)
    amortised = 2000 / (4 * 8760)
    usd, source = owned.hourly(GPUS["RTX 5090"], measured_watts=450.0)
    assert usd == pytest.approx(0.450 * 0.20 + amortised)
    assert source == "owned: 450 W (measured) at $0.2/kWh + $2,000 over 4 years"
    assert owned.hourly(GPUS["RTX 5090"])[0] == pytest.approx(0.575 * 0.20 + amortised)
    fixed = Costs(owned={"RTX 5090": OwnedCard(2000.0, 4.0, power_watts=300.0)})
    assert fixed.hourly(GPUS["RTX 5090"], 450.0)[0] == pytest.approx(0.3 * 0.15 + amortised)
    assert owned.hourly(GPUS["H100 SXM"]) == (2.50, "default as of 2025-06")
    p = project(STEP, GPUS["H100 SXM"], GPUS["RTX 5090"], inputs=Inputs(power_watts=450.0))
    price(p, owned)
    assert p.as_dict()["price_now_usd_per_hour"] == pytest.approx(usd)


def test_owned_and_gate_settings_are_read_and_checked() -> None:
    s = Settings(owned={"RTX 5090": OwnedGpu(purchase_usd=2000)}, electricity_usd_per_kwh=0.3,
                 move_min_time_gain=3, precision="fp8")
    costs = Costs.from_settings(s)
    assert costs.owned["RTX 5090"] == OwnedCard(2000.0, 4.0, None)
    assert (costs.electricity_usd_per_kwh, costs.min_time_gain) == (0.3, 3)
    assert engine_from_settings(s, "rank").context.precision == "fp8"
    replayed = replay_settings(json.loads(json.dumps(detection_settings(s))), Settings())
    assert Costs.from_settings(replayed) == costs  # a replay prices as the run did
    with pytest.raises(ConfigError, match="unknown GPU 'RTX 9090'"):
        engine_from_settings(Settings(owned={"RTX 9090": OwnedGpu(purchase_usd=1)}), "rank")
    with pytest.raises(ConfigError) as err:
        load_settings(owned={"RTX 5090": {"purchase_usd": -5}})
    assert "owned.RTX 5090.purchase_usd" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=r"prices\.H100 SXM: Input should be greater than 0"):
        load_settings(prices={"H100 SXM": 0})


def test_one_line_for_people() -> None:
    p = project(StepParts(compute=2.0), GPUS["H100 SXM"], GPUS["RTX 5090"],
                inputs=Inputs(units_per_step=8192, unit="1M tokens", remaining_steps=36_000,
                              gpu_busy=1.0))
    decide(p, Costs(), otherwise="info")
    text = projection_text(p.as_dict())
    assert text.startswith("2 s/step now -> 0.747 s/step on H100 SXM: "
                           "1.9\u20134.7\u00d7 (2.7\u00d7 at the middle); $0.0475 -> $0.0907 "
                           "per 1M tokens at the low end; finishes in 20 h here, 10.7 h there "
                           "at the low end; move_to_h100: time to result 1.9x shorter")


# -- the gate in the detectors -------------------------------------------------------------

def test_a_job_short_of_memory_on_the_target_card_is_fixed_there_naming_a_bigger_card() -> None:
    """An H100 job at its memory limit gets no ``move_to_h100`` (it is on one): fix it
    there (shard it), with the first bigger card its need fits named as the other way."""
    records: list[Record] = [
        meta(), topology("NVIDIA H100 80GB HBM3", 80 * GB),
        Event(0, START + 5, "oom", {"type": "OutOfMemoryError"}),
        *steps(60, wall=0.5),
        *samples("allocator", 60, {"allocator_reserved_bytes": 60 * GB,
                                   "allocator_allocated_bytes": 30 * GB,
                                   "allocator_alloc_retries_total": 0.0},
                 ramp={"allocator_alloc_retries_total": 1.0})]
    f = only(judge(records), "fits_on_paper")
    assert f.projection is not None and f.projection["target"] == "H200"  # the first that fits
    assert f.verdict == "fix_here"
    assert "already runs on H100 SXM" in f.summary and "H200" in f.summary


def test_a_sync_bottleneck_whose_move_does_not_pay_is_fixed_here() -> None:
    records: list[Record] = []
    for r in range(2):
        records += [meta(r, 2),
                    topology("NVIDIA GeForce RTX 5090", 32 * GB, rank=r, gpus=2),
                    *steps(60, rank=r, compute_s=0.095, collective_s=0.06,
                           collective_bytes=int(64e6))]
    pays = only(judge(records, scope="job"), "sync_bottleneck")
    assert pays.verdict == "move_to_h100"
    assert pays.projection is not None and pays.projection["decision"]["rule"] == "cheaper"
    costly = only(judge(records, scope="job", prices={"H100 SXM": 100.0},
                        move_min_time_gain=50), "sync_bottleneck")
    assert costly.verdict == "fix_here" and costly.action.startswith("The move does not pay: ")
    assert costly.projection is not None and costly.projection["decision"]["rule"] is None


def test_a_job_on_mixed_cards_is_projected_from_the_slowest_and_priced_at_each_ranks_own(
) -> None:
    """4 ranks bound by an all-reduce without P2P, rank 0 on an H100 PCIe and the rest on
    RTX 5090s: rank 0's card was taken for every rank's, so the job read as four H100
    PCIe cards (a move "cheaper" than today's price of four of them). The 5090s pace
    every step, and today's price is the mean of the four cards'."""
    def job(first_card: str) -> Finding:
        records: list[Record] = []
        for r in range(4):
            card = first_card if r == 0 else "NVIDIA GeForce RTX 5090"
            records += [meta(r, 4), topology(card, 80 * GB if r == 0 else 32 * GB, rank=r,
                                             gpus=4),
                        *steps(60, rank=r, compute_s=0.095, collective_s=0.06,
                               collective_bytes=int(64e6))]
        return only(judge(records, scope="job"), "sync_bottleneck")

    pure, mixed = job("NVIDIA GeForce RTX 5090"), job("NVIDIA H100 PCIe")
    assert pure.projection is not None and mixed.projection is not None
    assert mixed.projection["current"] == "RTX 5090"
    gpus = catalogue()
    mean = (gpus["H100 PCIe"].price_per_hour + 3 * gpus["RTX 5090"].price_per_hour) / 4
    assert mixed.projection["price_now_usd_per_hour"] == pytest.approx(mean)
    assert "1 H100 PCIe" in mixed.projection["price_now_source"]
    assert mixed.verdict == pure.verdict
    assert mixed.projection["step_seconds_projected"] == pytest.approx(
        pure.projection["step_seconds_projected"])


def test_a_rank_whose_card_nvml_did_not_name_is_not_the_configured_model_beside_named_ones(
) -> None:
    """Four H100 ranks, one of which could not read NVML, with a fleet-wide gpu_model of
    RTX 5090: that rank's card was taken to be the configured one, the slowest of the
    job, and the job projected and priced as if on RTX 5090s. The configured model
    names a card only where NVML names none."""
    records: list[Record] = []
    for r in range(4):
        records += [meta(r, 4), *steps(60, rank=r, compute_s=0.095, collective_s=0.06,
                                       collective_bytes=int(64e6))]
        if r != 3:
            records.append(topology("NVIDIA H100 PCIe", 80 * GB, rank=r, gpus=4))
    f = only(judge(records, scope="job", gpu_model="RTX 5090"), "sync_bottleneck")
    assert f.projection is not None and f.projection["current"] == "H100 PCIe"


def test_a_mig_slice_is_told_as_a_slice_of_its_card() -> None:
    """A job on an H100 MIG 3g.40gb slice was told the card "is not in gpuwatch's
    catalogue", as if it were some unknown GPU: it runs on a slice of a known one, and
    a bigger slice or the whole card is the step up."""
    told = unknown_card("NVIDIA H100 80GB HBM3 MIG 3g.40gb")
    assert "MIG slice (3g.40gb) of NVIDIA H100 80GB HBM3" in told
    assert "whole card" in told and "not in gpuwatch's catalogue" not in told
    assert "not in gpuwatch's catalogue" in unknown_card("NVIDIA A10G")

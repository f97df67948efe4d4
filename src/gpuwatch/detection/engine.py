"""The detection engine: feeds records into per-rank telemetry windows and runs the
detectors on a schedule of *record* time, so a run log replayed offline gives
exactly the findings the live agent gave.

Rank-scope detectors judge one rank at a time; job-scope detectors (straggler,
sync bottleneck) compare ranks and run wherever several ranks' records meet
(``gpuwatch analyze``, the end of ``gpuwatch run``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, NamedTuple, Protocol

from gpuwatch.config import ConfigError, Settings
from gpuwatch.detection import (
    checkpoint_overhead,
    data_starvation,
    fits_on_paper,
    hang,
    interruptions,
    iteration_speed,
    straggler,
    sync_bottleneck,
    throttling,
    underutilised,
)
from gpuwatch.detection.context import HOLDING, WAITING, Context, Detection, for_s, scale, window_s
from gpuwatch.detection.hang import HOLD_FRESH_S
from gpuwatch.detection.moves import Costs
from gpuwatch.detection.projection import catalogue, identify
from gpuwatch.detection.rank_input import RankInput
from gpuwatch.detection.rules import Rule, Scope, load_rules
from gpuwatch.detection.step_digest import DigestRank, StepDigest
from gpuwatch.faults import log
from gpuwatch.records import Finding, Meta, Record
from gpuwatch.telemetry import Ending, Telemetry

RankDetector = Callable[[Telemetry, Rule, Context, float], Detection | None]
JobDetector = Callable[[Sequence[RankInput], Rule, Context, float], Detection | None]
Detect = Callable[..., Detection | None]  # a rule's detector, of either scope

# Detectors in the order they judge (dict order): a detector sees which conditions the
# ones before it found in the same evaluation (``Context.explained``), so
# ``underutilised``, which defers to the others, runs last.
RANK_DETECTORS: dict[str, RankDetector] = {
    "checkpoint_overhead": checkpoint_overhead.detect,
    "data_starvation": data_starvation.detect,
    "fits_on_paper": fits_on_paper.detect,
    "hang": hang.detect,
    "interruptions": interruptions.detect,
    "throttling": throttling.detect,  # (before the projections, which it holds back)
    "iteration_speed": iteration_speed.detect,
    "underutilised": underutilised.detect,
}
JOB_DETECTORS: dict[str, JobDetector] = {
    "straggler": straggler.detect,
    "sync_bottleneck": sync_bottleneck.detect,
}
# Judged on every interval once the silence they need may have passed (the threshold
# named here, seconds since a rank's last progress): what they see is what did *not*
# happen.
ABSENCE_DRIVEN = {"hang": "min_seconds"}
# Judged over the whole run so far (a run-long share of the wall time) or from where the
# run is now (its time to finish, a rank stuck): the last evaluation of a run or log
# judges the run as it ended, so a finding it does not find again resolves there,
# whatever its hold (a save share that fell under its threshold over the rest of the
# run, "698 steps to go" in a run that finished them, a hang the job got past and
# stepped on from).
JUDGED_AT_THE_END = frozenset({"checkpoint_overhead", "hang", "interruptions",
                               "iteration_speed"})
# A judgement over steps is refreshed at the first step to come once new steps have
# moved its window by this fraction of itself: a new mean differs little before, and
# judging at every step costs most of a replay of multi-second steps (an event or a
# change of what explains the rank is seen at once). Refreshing only as a step arrives
# lets one evaluation refresh every judgement that is due, not one evaluation each.
# (A quarter, not an eighth: a condition's first report comes about 2 steps later, 14
# steps after its onset rather than 12, and a replay takes 12% less CPU.)
REFRESH_DIVISIONS = 4
NOTHING: frozenset[str] = frozenset()
STALL_S = 10.0  # a rank with no step or progress this long (or 3 median steps) is stalled


class Explains(Protocol):
    """What explains a rank's condition: findings active and conditions detected (still
    short of ``for_s``), as (detector, ranks). ``revision`` changes whenever that may
    have changed."""

    revision: int

    def covered(self) -> list[tuple[str, list[int]]]: ...


def _stamps(judged: dict[int, RankInput]) -> dict[int, int]:
    return {r: v.changed for r, v in judged.items()}


def fingerprint(job: str, detector: str, ranks: list[int]) -> str:
    """Stable while a condition lasts: the job, the detector and the ranks it names."""
    return _fingerprint(job, detector, tuple(sorted(ranks)))


@lru_cache(maxsize=4096)
def _fingerprint(job: str, detector: str, ranks: tuple[int, ...]) -> str:
    key = f"{job}|{detector}|{','.join(map(str, ranks))}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class Judgement(NamedTuple):
    """What a rule found and what it saw: its ranks' step stamps, their event stamps and
    the detectors that explained them (``seen``). It is refreshed at the first step to
    come after ``refresh_at`` (record time, s; an absence-driven rule's is judged afresh
    at every evaluation)."""

    steps: tuple[int, ...]
    seen: tuple[Any, ...]
    found: Detection | None
    refresh_at: float
    fp: str = ""  # the finding's fingerprint, when something was found
    sustain_s: float = 0.0  # how long it must hold before it is reported (``for_s``)


@dataclass
class Quiet:
    """What the last full evaluation saw, for telling whether the next one can reuse it
    whole: the judged ranks' step and event stamps, each rule's judgements that found
    something, and the record time (s) until which no judged rank counts as stalled and
    no absence-driven rule is due. (A judgement due for a refresh waits for the next
    step, which changes the stamps.)"""

    stamps: dict[int, int] = field(default_factory=dict)  # rank -> its ``changed``
    found: dict[str, list[Judgement]] = field(default_factory=dict)
    until: float = float("-inf")
    # rule -> (what its judgements saw, the first time one of them is due a refresh):
    # while both hold and no judged rank is stalled, each would be reused (``_judge``)
    standing: dict[str, tuple[Any, float]] = field(default_factory=dict)

    def stands(self, rule_id: str, sight: Any, now: float, fresh: Fresh) -> bool:
        """Whether every judgement of the rule stands at ``now`` as it is."""
        held = self.standing.get(rule_id)
        return (held is not None and now < held[1] and not fresh.stalled
                and held[0] == sight)

    def holds(self, stamps: dict[int, int], now: float) -> bool:
        """Whether an evaluation at ``now`` of ranks with these ``stamps`` sees what the
        last full one saw."""
        return now < self.until and stamps == self.stamps

    def settle(self, judged: dict[int, RankInput], stamps: dict[int, int],
               stall_at: dict[int, float], rules: dict[str, Rule]) -> None:
        """After a full evaluation: what it saw, and until when it stands."""
        self.stamps = stamps
        last_progress = min((v.last_progress for v in judged.values()), default=0.0)
        due = [last_progress + rules[rule_id].thresholds[threshold]
               for rule_id, threshold in ABSENCE_DRIVEN.items() if rule_id in rules]
        self.until = min([*stall_at.values(), *due], default=float("inf"))


@dataclass
class Calm:
    """After an evaluation: until when (record time, s) the next ones can change nothing
    but last-seen times while no step or event comes and nothing that explains the
    ranks changes (``revisions``: this engine's and its peers', as read then): no
    detection reaches its ``for_s`` and no finding's hold runs out before. ``seen``:
    the findings whose condition has held for its ``for_s``, which each such evaluation
    sees again (one back for less is not seen until it has held again)."""

    until: float = float("-inf")
    revisions: tuple[int, ...] = ()
    seen: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Fresh:
    """What a full evaluation must judge afresh: the ranks with a step or event since
    the last full one (``stepped``) and those stalled now."""

    stepped: set[int]
    stalled: set[int]


RECUR_S = 600.0  # the longest hold of a condition that recurs (``Engine._hold``)
CALM_MARGIN_S = 1e-3  # a deadline this near is left to a full evaluation (rounding)


@dataclass
class Engine:
    """Judges the records fed to it every ``interval_s`` of record time.

    ``scope`` picks the detectors: ``rank`` (what each process's agent runs) or
    ``job`` (cross-rank). ``make_view`` makes a rank's telemetry (a replay's job engine
    knows ranks by their step digests: ``step_digest.DigestRank``); ``rank_detectors``
    are the rank-scope detectors, in the order they judge. ``feed`` and
    ``close`` return the findings raised or resolved by that call; ``findings`` keeps
    the latest state of each. ``published`` are the ranks a job engine knows only from
    what they publish (rank 0's, live).
    ``peers`` are engines whose active findings also explain this one's ranks (the job
    engine, for the rank engines beside it). ``for_s`` and the resolve delay scale
    with the window (see ``context.scale``).
    """

    rules: dict[str, Rule]
    context: Context
    scope: Scope = "rank"
    job: str = ""
    interval_s: float = 1.0
    views: dict[int, Telemetry] = field(default_factory=dict)
    make_view: Callable[[int], Telemetry] = Telemetry
    rank_detectors: Mapping[str, RankDetector] = field(default_factory=lambda: RANK_DETECTORS)
    published: dict[int, RankInput] = field(default_factory=dict)
    _findings: dict[str, Finding] = field(default_factory=dict)
    _seen_at: dict[str, float] = field(default_factory=dict)  # fp -> last seen, not yet in it
    errors: int = 0
    _pending: dict[str, float] = field(default_factory=dict)  # fingerprint -> first detected
    _detected: dict[str, tuple[str, list[int]]] = field(default_factory=dict)  # fp -> id, ranks
    _clock: float = 0.0
    next_eval: float = float("-inf")  # record time of the next judgement
    _own: dict[int, Telemetry] = field(default_factory=dict)  # this engine's ranks' views
    peers: list[Explains] = field(default_factory=list)
    # (rule, ranks) -> the latest judgement: reused while what it saw holds
    _judged: dict[tuple[str, tuple[int, ...]], Judgement] = field(default_factory=dict)
    _raised: dict[str, Detection] = field(default_factory=dict)  # fp -> its finding's detection
    _quiet: Quiet = field(default_factory=Quiet)
    _calm: Calm = field(default_factory=Calm)
    _views_made: int = 0  # views made or replaced (a restart): the judged ranks change
    _judged_cache: dict[int, RankInput] = field(default_factory=dict)
    _judged_key: tuple[int, ...] = ()  # (_views_made, len(views), len(published)) of it
    _explained_key: tuple[int, ...] = ()  # the revisions and judged key ``_explain`` saw
    revision: int = 0  # changes with what ``covered`` returns
    _holding: list[int] = field(default_factory=list)  # job scope: ranks working off-step
    _recurs: dict[str, float] = field(default_factory=dict)  # fp -> hold of a flapping one
    _cleared: dict[str, float] = field(default_factory=dict)  # fp -> last seen, if resolved
    trained_s: float = 0.0  # set by ``retire``: the longest any rank trained past warm-up
    endings: dict[int, Ending] = field(default_factory=dict)  # by ``retire``: own ranks'
    _plan_of: tuple[object, object] | None = None  # the rules and detectors of _plan_cache
    _plan_cache: list[tuple[Rule, Detect]] = field(default_factory=list)

    def view(self, rank: int) -> Telemetry:
        """This rank's telemetry (created on first use); the rank becomes this engine's own."""
        v = self.views.get(rank)
        if v is None:
            v = self.views[rank] = self.make_view(rank)
        if self._own.get(rank) is not v:
            self._own[rank] = v
            self._views_made += 1
        return v

    def retire(self) -> None:
        """Done judging: keep the findings and how each rank's log ended (``endings``),
        let go of every rank's telemetry, the peers and the judgements (what a replay
        keeps of an engine, and a worker sends back)."""
        self.trained_s = max((v.last_step_t - v.warmed_at for v in self.views.values()
                              if v.warmed_at), default=0.0)
        if self.scope == "rank":
            self.endings = {r: v.ending() for r, v in self._own.items()}
        self.views, self._own, self.published, self.peers = {}, {}, {}, []
        self._judged, self._raised, self._quiet = {}, {}, Quiet()
        self._judged_cache, self._judged_key, self._explained_key = {}, (), ()
        self._holding = []

    def feed(self, records: Iterable[Record]) -> list[Finding]:
        """Take records into the telemetry windows, judging whenever their time says so."""
        out: list[Finding] = []
        for r in records:
            changes = self.take(r)
            if changes:
                out.extend(changes)
        return out

    def take(self, r: Record | StepDigest) -> list[Finding]:
        """``feed`` of one record or step digest (a replay's merge hands them over one at
        a time)."""
        if isinstance(r, Finding):
            return []  # a replayed log's own findings are outputs, not inputs
        if isinstance(r, Meta):
            self.job = self.job or r.job
            old = self.views.get(r.rank)
            if old is not None and old.meta is not None:  # a restart logged in one file
                self.views[r.rank] = self.make_view(r.rank)  # (older logs): a new timeline
            self.view(r.rank).add_one(r)
            return []
        view = self._own.get(r.rank)
        if view is None:
            view = self.view(r.rank)
        if not isinstance(r, StepDigest):
            view.add_one(r)
        elif isinstance(view, DigestRank):
            view.add_digest(r)
        else:
            raise TypeError("a step digest for an engine whose views are not DigestRank")
        t = r.t
        if t >= self.next_eval:
            return self.observe(t)
        if t > self._clock:
            self._clock = t
        return []

    def observe(self, t: float) -> list[Finding]:
        """Advance the record clock to ``t``; judge when an interval has passed."""
        self._clock = max(self._clock, t)
        if self.next_eval == float("-inf"):
            self.next_eval = t + self.interval_s
            return []
        if t < self.next_eval:
            return []
        self.next_eval = self._clock + self.interval_s
        return self.evaluate(self._clock)

    def close(self) -> list[Finding]:
        """A last evaluation at the newest record time (end of run or of the log), each
        finding held as long as its rule holds it (``_hold`` without the recurrences), but
        those of rules ``JUDGED_AT_THE_END`` only where it finds them again. A
        condition still detected on a rank that died of an OOM, whose detection counts
        OOMs, is raised however briefly it held: the job died of it."""
        if not self._clock:
            return []
        if self.scope == "rank":
            for view in self._own.values():
                view.end()
        self._judged, self._quiet, self._calm = {}, Quiet(), Calm()  # (all judged afresh)
        # a finding held through its condition's absences (it came and went) is active at
        # the end only where its condition was seen within its own hold: no return is due
        self._recurs = {}
        changes = self.evaluate(self._clock)
        for fp, f in self._findings.items():  # (values replaced in place: no resize)
            if f.state == "active" and f.detector in JUDGED_AT_THE_END and fp not in self._pending:
                self._cleared[fp] = self._seen_at.pop(fp, f.last_seen)
                self._findings[fp] = replace(f, state="resolved", last_seen=self._clock)
                self.revision += 1
                changes.append(self._findings[fp])
        died = {r for r, v in self._own.items() if self.scope == "rank" and v.died_of_oom}
        for (rule_id, _), j in self._judged.items() if died else ():
            since = self._pending.get(j.fp)
            active = self._findings.get(j.fp)
            if (j.found is None or since is None or not j.found.evidence.get("ooms_total")
                    or died.isdisjoint(j.found.ranks)
                    or (active is not None and active.state == "active")):
                continue
            raised = self._raise(self.rules[rule_id], j.found, j.fp, self._clock, since)
            if raised is not None:
                changes.append(raised)
        return changes

    @property
    def findings(self) -> dict[str, Finding]:
        """The latest state of every finding, by fingerprint."""
        for fp, t in self._seen_at.items():  # (kept apart: judging again is frequent)
            self._findings[fp] = replace(self._findings[fp], last_seen=t)
        self._seen_at.clear()
        return self._findings

    def active(self) -> list[Finding]:
        return [f for f in self._findings.values() if f.state == "active"]

    def covered(self) -> list[tuple[str, list[int]]]:
        """(detector, ranks) of the active findings, then of the conditions detected, then
        (``HOLDING``, ranks) while ranks work between steps (job scope)."""
        holding = [(HOLDING, self._holding)] if self._holding else []
        return ([(f.detector, f.ranks) for f in self.active()] + list(self._detected.values())
                + holding)

    def evaluate(self, now: float) -> list[Finding]:
        """Judge at record time ``now``: the findings raised or resolved.

        When nothing a judgement saw has changed since the last evaluation (no step or
        event on the judged ranks, the same explanations, none stalled, no
        absence-driven rule due), every judgement stands and none is asked again:
        only the time-driven bookkeeping runs (``for_s``, last seen, resolving), and
        not even that before its next deadline (``Calm``)."""
        judged = self._judged_ranks()
        if self.scope == "job":
            self._note_holding(judged, now)
        stamps = _stamps(judged)
        revisions = (self.revision, *(peer.revision for peer in self.peers))
        calm = self._calm
        unchanged = self._quiet.holds(stamps, now)
        if now < calm.until and revisions == calm.revisions and unchanged:
            for fp in calm.seen:
                self._seen_at[fp] = now
            return []
        changes: list[Finding] = []
        seen: set[str] = set()
        sustained: list[str] = []  # seen, and held for ``for_s``: reported as seen again
        deadlines: list[float] = []  # when a detection is sustained or a finding resolves
        before = self.context.explained
        self._explain(judged)
        sight = self._sight(judged)
        quiet = unchanged and self.context.explained == before
        stale = False  # whether what explains changed since ``_explain`` last ran
        stall_at = {r: v.last_progress + stall_s(v) for r, v in judged.items()}
        fresh = Fresh(stepped={r for r, stamp in stamps.items()
                               if stamp != self._quiet.stamps.get(r)},
                      stalled={r for r, at in stall_at.items() if now > at})
        for rule, detect in self._plan():
            rule_id = rule.id
            if stale:
                before = self.context.explained
                self._explain(judged)
                sight = self._sight(judged)
                quiet = quiet and self.context.explained == before
            stale = False
            if quiet or self._quiet.stands(rule_id, sight, now, fresh):
                judgements = self._quiet.found.get(rule_id, [])
            else:
                judgements, due = self._run(rule, detect, judged, now, fresh)
                self._quiet.found[rule_id] = judgements
                if due is None:  # (a detector failed: judged again next time)
                    self._quiet.standing.pop(rule_id, None)
                else:
                    self._quiet.standing[rule_id] = (sight, due)
            for judgement in judgements:
                fp, detection = judgement.fp, judgement.found
                if detection is None:  # (_run returns only what found something)
                    continue
                if (self.scope == "rank" and rule_id not in ABSENCE_DRIVEN
                        and _between_steps(detection.ranks, judged, now)
                        and not ((f := self._findings.get(fp)) and f.state == "active")):
                    continue  # (the steps before a gap keep a finding; they start none)
                seen.add(fp)
                since = self._pending.setdefault(fp, now)
                if fp not in self._detected:  # newly detected: it explains from now on
                    self._detected[fp] = (rule_id, detection.ranks)
                    self.revision += 1
                    stale = True
                if now - since < judgement.sustain_s:
                    deadlines.append(since + judgement.sustain_s)
                    continue  # not sustained long enough yet
                sustained.append(fp)
                changed = self._raise(rule, detection, fp, now, since)
                if changed is not None:
                    changes.append(changed)
        if not quiet:
            self._quiet.settle(judged, stamps, stall_at, self.rules)
        for fp in [fp for fp in self._pending if fp not in seen]:
            del self._pending[fp], self._detected[fp]
            self.revision += 1
        for fp, f in self._findings.items():  # (values replaced in place: no resize)
            if f.state != "active" or fp in seen:
                continue
            last, hold = self._seen_at.get(fp, f.last_seen), self._hold(f, judged)
            if now - last >= hold:
                self._seen_at.pop(fp, None)
                self._cleared[fp] = last
                resolved = replace(f, state="resolved", last_seen=now)
                self._findings[fp] = resolved
                self.revision += 1
                changes.append(resolved)
            else:
                deadlines.append(last + hold)
        self._calm = Calm(min(deadlines, default=float("inf")) - CALM_MARGIN_S, revisions,
                          sustained)
        return changes

    def _note_holding(self, judged: dict[int, RankInput], now: float) -> None:
        """Which ranks are working between steps now, holding the others at their next
        collective: a save their newest agent reading says is open (younger than the
        longest ``hang`` lets a save take, its ``max_save_seconds``), progress since
        their newest step (an eval's or a long step's batches), or, once they have gone
        quiet, readings of their GPU or CPU at work (``hang.working_off_step``: previews,
        an export, in logs without progress records); each no older than
        ``HOLD_FRESH_S``."""
        hang_rule = self.rules.get("hang")
        th = hang_rule.thresholds if hang_rule else {}
        holding = [r for r, v in judged.items() if _works_off_step(v, now, th)]
        if holding != self._holding:
            self._holding = holding
            self.revision += 1

    def _judged_ranks(self) -> dict[int, RankInput]:
        """The ranks this engine judges, by rank: its own (rank scope); every rank it
        holds records of or hears from (job scope). Made again only when a view is made
        or replaced, or a rank is added to ``views`` or ``published`` (which only grow:
        a view is replaced through ``view``, never by assigning an existing rank's)."""
        key = (self._views_made, len(self.views), len(self.published))
        if key != self._judged_key:
            if self.scope == "job":
                every: dict[int, RankInput] = {**self.views, **self.published}
                self._judged_cache = {r: every[r] for r in sorted(every)}
            else:
                self._judged_cache = {r: self._own[r] for r in sorted(self._own)}
            self._judged_key = key
        return self._judged_cache

    def _hold(self, f: Finding, judged: dict[int, RankInput]) -> float:
        """How long a finding stays active after its condition was last seen (seconds):
        its window, at most a minute, scaled as the window is; for one that came back
        within twice ``RECUR_S`` of when its condition was last seen, at least twice the
        longest such absence (at most ``RECUR_S``): a condition that comes and goes stays
        one finding, not an alert at every return."""
        rule = self.rules.get(f.detector)
        if rule is None:
            return 0.0
        factor = max((scale(judged[r], rule) for r in f.ranks if r in judged),
                     default=1.0)
        return max(min(rule.window_s, 60.0) * factor, self._recurs.get(f.fingerprint, 0.0))

    def _explain(self, judged: dict[int, RankInput]) -> None:
        """Tell the detectors which findings are active and which conditions are detected
        (still short of ``for_s``), and on which of the ``judged`` ranks: job-scope ones
        cover every rank. Nothing to do while neither the revisions of what explains nor
        the judged ranks changed since the last time."""
        key = (self.revision, *[peer.revision for peer in self.peers], *self._judged_key)
        if key == self._explained_key:
            return
        self._explained_key = key
        explained: dict[int, set[str]] = {}
        for engine in (self, *self.peers):
            for detector, ranks in engine.covered():
                rule = self.rules.get(detector)
                job_wide = detector == HOLDING or (rule is not None and rule.scope == "job")
                for r in (judged if job_wide else ranks):
                    if r in judged:
                        explained.setdefault(r, set()).add(detector)
                        if detector == "straggler" and r not in ranks:
                            explained[r].add(WAITING)
        before = self.context.explained
        self.context.explained = {  # the sets of before where unchanged: cheap to compare
            r: old if (old := before.get(r)) == (new := frozenset(ds)) else new
            for r, ds in explained.items()}

    def _plan(self) -> list[tuple[Rule, Detect]]:
        """The rules this engine judges, in the order they judge, each with its detector:
        made again only when ``rules`` or ``rank_detectors`` is replaced."""
        detectors = self.rank_detectors if self.scope == "rank" else JOB_DETECTORS
        made_of = self._plan_of
        if made_of is None or made_of[0] is not self.rules or made_of[1] is not detectors:
            self._plan_of = (self.rules, detectors)
            self._plan_cache = [(rule, detect) for rule_id, detect in detectors.items()
                                if (rule := self.rules.get(rule_id)) is not None
                                and rule.scope == self.scope]
        return self._plan_cache

    def _sight(self, judged: dict[int, RankInput]) -> tuple[Any, ...]:
        """What judgements of ``judged`` see of them beside their steps: which ranks,
        their event stamps and what explains each (``Judgement.seen``, all ranks')."""
        explained = self.context.explained
        return (self._judged_key, tuple([v.event_stamp for v in judged.values()]),
                tuple([explained.get(r, NOTHING) for r in judged]))

    def _run(self, rule: Rule, detect: Detect, judged: dict[int, RankInput], now: float,
             fresh: Fresh) -> tuple[list[Judgement], float | None]:
        """The rule's judgements that found something: one of every rank (rank scope),
        one of them all (job scope); and the first time one of all its judgements is
        due a refresh (None where the detector failed)."""
        try:
            if rule.scope == "job":
                found = self._judge(rule, tuple(judged.values()), now, detect, fresh)
                return ([found] if found.found else []), found.refresh_at
            out, due = [], math.inf
            for view in judged.values():
                judgement = self._judge(rule, (view,), now, detect, fresh)
                due = min(due, judgement.refresh_at)
                if judgement.found:
                    out.append(judgement)
            return out, due
        except Exception as exc:  # a detector bug must not stop the others or the job
            self.errors += 1
            if self.errors == 1:
                log.warning("gpuwatch: detector %s failed: %s: %s", rule.id,
                            type(exc).__name__, exc)
            return [], None

    def _judge(self, rule: Rule, views: Sequence[RankInput], now: float, detect: Detect,
               fresh: Fresh) -> Judgement:
        """The rule's judgement of ``views`` (one rank's telemetry for a rank detector,
        every rank for a job detector). The previous one is reused while what explains
        them and their events are the same, no rank is stalled (``stall_s``), and either
        no step came, or the window has moved by less than 1/``REFRESH_DIVISIONS`` of
        itself since, or no step came since the last evaluation (a refresh waits for the
        next step).
        Absence-driven rules always judge afresh. How long a detection must hold
        (``for_s``, scaled by the slowest rank it names) is set when it is judged."""
        explained = self.context.explained
        if len(views) == 1:
            v = views[0]
            ranks: tuple[int, ...] = (v.rank,)
            steps: tuple[int, ...] = (v.changed,)
            seen: tuple[Any, ...] = (v.event_stamp, explained.get(v.rank, NOTHING))
        else:
            ranks = tuple(v.rank for v in views)
            steps = tuple(v.changed for v in views)
            seen = (*(v.event_stamp for v in views),
                    *(explained.get(r, NOTHING) for r in ranks))
        key = (rule.id, ranks)
        previous = self._judged.get(key)
        if (previous is not None and previous.seen == seen
                and (previous.steps == steps or now < previous.refresh_at
                     or fresh.stepped.isdisjoint(ranks))
                and rule.id not in ABSENCE_DRIVEN
                and fresh.stalled.isdisjoint(ranks)):
            return previous
        found = detect(views[0] if rule.scope == "rank" else views, rule, self.context, now)
        refresh_at = now if rule.id in ABSENCE_DRIVEN else now + refresh_s(views, rule,
                                                                            found is not None)
        if found is None:
            judgement = Judgement(steps, seen, None, refresh_at)
        else:
            named = [v for v in views if v.rank in found.ranks] or views
            judgement = Judgement(steps, seen, found, refresh_at,
                                  fingerprint(self.job, rule.id, found.ranks),
                                  for_s(named, rule))
        self._judged[key] = judgement
        return judgement

    def _raise(self, rule: Rule, d: Detection, fp: str, now: float,
               since: float) -> Finding | None:
        """Record a detection; return the finding when it is new (or back after clearing).
        ``first_seen`` is when the condition was first detected, before ``for_s`` ran."""
        previous = self._findings.get(fp)
        if previous is not None and previous.state == "active" and self._raised.get(fp) is d:
            self._seen_at[fp] = now  # the same judgement, again
            return None
        self._seen_at.pop(fp, None)
        self._raised[fp] = d
        if previous is not None and previous.state == "resolved":  # back after clearing
            gap = since - self._cleared.pop(fp, previous.last_seen)
            if gap <= 2 * RECUR_S:  # (held up to RECUR_S, a return just past it recurs)
                self._recurs[fp] = min(max(self._recurs.get(fp, 0.0), 2 * gap), RECUR_S)
            else:
                self._recurs.pop(fp, None)
        first_seen = previous.first_seen if previous and previous.state == "active" else since
        wording = rule.variants.get(d.variant or "") or rule
        finding = Finding(
            detector=rule.id, verdict=d.verdict or rule.verdict,
            severity=d.severity or rule.severity,
            summary=_fill(wording.summary, d, rule.title), action=_fill(wording.action, d, ""),
            evidence=dict(d.evidence), ranks=sorted(d.ranks), first_seen=first_seen,
            last_seen=now, fingerprint=fp, job=self.job, projection=d.projection)
        self._findings[fp] = finding
        if previous is not None and previous.state == "active":
            return None
        self.revision += 1
        return finding


def _between_steps(ranks: Sequence[int], judged: dict[int, RankInput], now: float) -> bool:
    """Whether one of ``ranks`` has gone without a step for longer than it may before it
    counts as stalled (``stall_s``: an eval, a save, a pause, steps that stopped). A
    window then reaches back to the steps before (``context.recent``): they keep an
    active finding, but show no new condition holding for its ``for_s``. (Asked of a
    rank engine's own ranks only: a peer's newest step, published on its clock every
    few seconds, reads as a gap that is not there. A rank that died of an OOM is not
    between steps: its last steps are what it died of.)"""
    return any(now - v.last_step_t > stall_s(v) for r in ranks if (v := judged.get(r))
               and not (isinstance(v, Telemetry) and v.died_of_oom))


def _works_off_step(view: RankInput, now: float, th: Mapping[str, float]) -> bool:
    save = view.open_save()
    if (save is not None and now - save[0] <= HOLD_FRESH_S
            and save[1] + now - save[0] < th.get("max_save_seconds", math.inf)):
        return True
    progress = view.last_progress
    if progress > view.last_step_t and now - progress <= HOLD_FRESH_S:
        return True
    # (readings asked for only once the rank has gone quiet: not at every evaluation)
    return (now - max(view.last_step_t, progress) > stall_s(view) and "max_alone_seconds" in th
            and hang.working_off_step(view, now, th))


def refresh_s(views: Sequence[RankInput], rule: Rule, found: bool) -> float:
    """How long a judgement of ``views`` stands while only steps come (seconds): the
    widest of their windows over ``REFRESH_DIVISIONS``; one that ``found`` something,
    at least the rule's ``refresh_s`` (a projection of hours to finish)."""
    widest = max(window_s(v, rule) for v in views) / REFRESH_DIVISIONS
    return max(widest, rule.refresh_s) if found else widest


def stall_s(view: RankInput) -> float:
    """How long a rank may go without a step or progress before it counts as stalled
    (seconds): ``STALL_S`` or three median steps, whichever is longer."""
    return max(STALL_S, 3 * (view.median_step_s() or 0.0))


def _fill(template: str, d: Detection, fallback: str) -> str:
    """The rule's text with the detection's numbers; the fallback if a field is missing."""
    fields: dict[str, Any] = {**d.evidence, **d.text}
    try:
        return " ".join(template.format(**fields).split())
    except Exception:  # a user's rule file asking for a field, index or format not there
        return fallback


def engine_from_settings(settings: Settings, scope: Scope, job: str = "") -> Engine:
    """An engine with the shipped rules, the user's overrides and the run's context.

    Raises ConfigError (one line) for overrides, GPUs, prices or silenced detectors that
    do not exist.
    """
    rules = load_rules(overrides=settings.detectors)
    for detector in settings.slack.silence:  # (a typo silenced nothing, without a word)
        if detector not in rules:
            raise ConfigError(f"gpuwatch config: unknown detector {detector!r} in "
                              f"'slack.silence'; choose from {', '.join(sorted(rules))}")
    gpus = catalogue(settings.prices)
    for name in (settings.target_gpu, *settings.prices, *settings.owned):
        if name not in gpus:
            raise ConfigError(f"gpuwatch config: unknown GPU {name!r}; the catalogue has "
                              + ", ".join(gpus))
    if settings.gpu_model and identify(settings.gpu_model, gpus) is None:
        raise ConfigError(f"gpuwatch config: unknown gpu_model {settings.gpu_model!r}; "
                          "the catalogue has " + ", ".join(gpus))
    link = rules["sync_bottleneck"].thresholds if "sync_bottleneck" in rules else {}
    context = Context(gpus=gpus, target=settings.target_gpu, gpu_model=settings.gpu_model,
                      planned_steps=settings.total_steps, costs=Costs.from_settings(settings),
                      precision=settings.precision,
                      latency_bytes=link.get("min_bytes_per_step", 0.0),
                      link_explained=link.get("link_explained_ratio", 0.0),
                      loader_share=rules["data_starvation"].thresholds.get("data_share", 0.0)
                      if "data_starvation" in rules else 0.0)
    return Engine(rules, context, scope=scope, job=job, interval_s=settings.detect_interval_s)

"""The ``gpuwatch`` command: run | demo | analyze | report | compare | doctor | ...

User errors (bad arguments, bad config, a command that does not exist, a file
that cannot be read or written) print one line and exit 2 (127 for a missing
command); never a traceback. Everything printed is redacted (``gpuwatch.redact``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpuwatch._version import __version__
from gpuwatch.config import ConfigError, Settings, disabled, load_settings
from gpuwatch.lifeline import die_with_parent
from gpuwatch.redact import mask_url, redact

if TYPE_CHECKING:
    from gpuwatch.detection.compare import Comparison
    from gpuwatch.detection.replay import Analysis

BOOTSTRAP_DIR = Path(__file__).resolve().parent / "_bootstrap"


class UserError(Exception):
    """A mistake of the user's: printed as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    _escape_what_the_terminal_cannot_show()
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except (UserError, ConfigError) as exc:
        text = f"gpuwatch: {exc}" if isinstance(exc, UserError) else str(exc)
        print(one_line(redact(text)), file=sys.stderr)
        return 2
    except BrokenPipeError:  # its reader went away (`| head`): end as a piped tool does
        _mute()
        return 128 + signal.SIGPIPE
    except OSError as exc:  # a path that cannot be read or written: one line
        where = f": {exc.filename}" if exc.filename else ""
        print(one_line(redact(f"gpuwatch: {exc.strerror or exc}{where}")), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


def _escape_what_the_terminal_cannot_show() -> None:
    """Characters stdout's or stderr's encoding cannot write (a micro sign, a dash to an ASCII
    terminal, ``PYTHONIOENCODING=ascii``) are written as escapes, not a traceback."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(Exception):  # (closed, or not a text stream of ours)
                reconfigure(errors="backslashreplace")


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose errors (they quote what was given: a token put before
    ``--``, a bad value) are redacted as everything else printed is; its subcommands'
    parsers are of this class too."""

    def error(self, message: str) -> typing.NoReturn:
        super().error(one_line(redact(message)))


# control characters as escapes: a path or key holding a newline, an ESC or a bell
# given by the user stays one line and moves no terminal
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(32), 127)} | {10: "\\n", 13: "\\r", 9: "\\t"}


def one_line(text: str) -> str:
    """``text`` with its control characters written as escapes (``\\n``, ``\\x1b``)."""
    return text.translate(_CONTROLS)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gpuwatch", description=(
        "Live training telemetry and bottleneck detection for PyTorch: what holds a job "
        "back, what to fix, and whether it should move to an H100."))
    p.add_argument("--version", action="version", version=f"gpuwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a training command under the agent, no code change",
                         usage="gpuwatch run [-h] [--out DIR] [--job NAME] -- CMD [ARGS...]")
    run.add_argument("--out", type=Path, help="run directory (default: a new "
                     "runs/<job>-<time>-<suffix>; a reused one gets the next attempt)")
    run.add_argument("--job", help="job name (default: the script's name)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the training command, after --")
    run.set_defaults(handler=cmd_run)

    demo = sub.add_parser("demo", help="train a tiny GPT under the agent and show its status")
    demo.add_argument("--seconds", type=_positive, default=30.0, help="how long to train (s)")
    demo.add_argument("--out", type=Path, help="run directory (default runs/demo-<time>-<suffix>)")
    demo.set_defaults(handler=cmd_demo)

    analyze = sub.add_parser("analyze", help="replay run logs through the detectors")
    analyze.add_argument("runlogs", nargs="+", type=Path, metavar="RUNLOG",
                         help="run.jsonl files or run directories (all ranks)")
    analyze.add_argument("--json", action="store_true", help="print findings as JSON")
    analyze.set_defaults(handler=cmd_analyze)

    report = sub.add_parser("report", help="write the run's self-contained HTML report")
    report.add_argument("rundir", type=Path, metavar="RUNDIR", help="the run directory")
    report.add_argument("--out", type=Path, metavar="FILE",
                        help="where to write it (default RUNDIR/report.html)")
    report.add_argument("--compare", type=Path, metavar="BEFORE",
                        help="add a comparison with an earlier run (its directory)")
    report.set_defaults(handler=cmd_report)

    compare = sub.add_parser("compare", help="two runs of a job per unit of work")
    compare.add_argument("before", type=Path, metavar="BEFORE", help="the earlier run directory")
    compare.add_argument("after", type=Path, metavar="AFTER", help="the later run directory")
    compare.add_argument("--json", action="store_true", help="print the comparison as JSON")
    compare.set_defaults(handler=cmd_compare)

    dash = sub.add_parser("dashboards", help="Grafana dashboards: export or push")
    dash_sub = dash.add_subparsers(dest="action", required=True, metavar="ACTION")
    export = dash_sub.add_parser("export", help="write the dashboards' JSON")
    export.add_argument("dir", type=Path, help="directory for <uid>.json files")
    export.add_argument("--kubernetes", type=Path, metavar="FILE",
                        help="also write them as a Kubernetes ConfigMap")
    export.set_defaults(handler=cmd_dashboards_export)
    push = dash_sub.add_parser("push", help="upload them through the Grafana HTTP API")
    push.add_argument("--url", help="Grafana URL (default: GPUWATCH_GRAFANA__URL)")
    push.add_argument("--folder", help="folder title (default: gpuwatch)")
    push.set_defaults(handler=cmd_dashboards_push)

    rules = sub.add_parser("rules", help="Prometheus alerting rules from detectors/*.yaml")
    rules_sub = rules.add_subparsers(dest="action", required=True, metavar="ACTION")
    rexport = rules_sub.add_parser("export", help="write the rules and their promtool tests")
    rexport.add_argument("dir", type=Path, help="output directory (this repository's: "
                         "detectors/prometheus)")
    rexport.add_argument("--kubernetes", type=Path, metavar="FILE",
                         help="also write them as a PrometheusRule")
    rexport.add_argument("--runbook-url", default=None, metavar="URL",
                         help="absolute URL of docs/runbooks.md (default: the runbook_url "
                              "setting)")
    rexport.set_defaults(handler=cmd_rules_export)

    alerts = sub.add_parser("alerts", help="Slack notifications: test, flush or silence")
    alerts_sub = alerts.add_subparsers(dest="action", required=True, metavar="ACTION")
    atest = alerts_sub.add_parser("test", help="send one test message to the webhook")
    atest.set_defaults(handler=cmd_alerts_test)
    aflush = alerts_sub.add_parser("flush", help="deliver notifications spooled in run dirs")
    aflush.add_argument("runs", nargs="+", type=Path, metavar="RUNDIR",
                        help="run directories whose spooled notifications to deliver")
    aflush.add_argument("--timeout", type=_positive, default=120.0, help="seconds to try")
    aflush.set_defaults(handler=cmd_alerts_flush)
    asilence = alerts_sub.add_parser("silence", help="stop notes of one job's finding")
    asilence.add_argument("run", type=Path, metavar="RUNDIR",
                          help="the run directory whose notifications to silence")
    asilence.add_argument("detector", metavar="DETECTOR", help="detector id, e.g. hang")
    asilence.add_argument("--for", dest="seconds", type=_duration, metavar="DURATION",
                          help="how long (90s, 30m, 4h, 2d; default: for the whole run)")
    asilence.set_defaults(handler=cmd_alerts_silence)

    metrics = sub.add_parser("metrics", help="print the metric catalogue (docs/metrics.md)")
    metrics.set_defaults(handler=cmd_metrics)

    doctor = sub.add_parser("doctor", help="what this machine offers gpuwatch")
    doctor.set_defaults(handler=cmd_doctor)
    return p


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < math.inf:  # (NaN fails both)
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def job_name(cmd: Sequence[str]) -> str:
    """The training script's stem (``train`` for ``torchrun ... train.py``, or for ``bash -c
    "X=1 python train.py"``), else the program's name; characters other than letters,
    digits, ``.``, ``_`` and ``-`` become ``_`` (it names a directory and a label)."""
    words = [word for arg in cmd for word in arg.split()]
    script = next((w for w in words if w.endswith(".py")), None)
    name = Path(script).stem if script else Path(cmd[0]).name
    return re.sub(r"[^\w.-]", "_", name) or "train"


def cmd_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UserError("run needs a command: gpuwatch run [--out DIR] -- CMD [ARGS...]")
    env = dict(os.environ)
    # what the child will read: fail here, not in it (unless gpuwatch is off)
    given = {k: v for k, v in (("job", args.job), ("out_dir", args.out)) if v is not None}
    settings = None if disabled(env) else load_settings(**given)
    enabled = settings is not None and settings.enabled
    # the flag, else a configured job (environment, gpuwatch.toml), else the script's name
    job = (settings.job if settings is not None and "job" in settings.model_fields_set
           else args.job or os.environ.get("GPUWATCH_JOB") or job_name(cmd))
    out = settings.out_dir if settings is not None else args.out
    if settings is not None and enabled:
        check_names(settings)
        out, attempt = run_dir(out, job)
        env.update(GPUWATCH_JOB=job, GPUWATCH_OUT_DIR=str(out.resolve()),
                   GPUWATCH_ATTEMPT=str(attempt))
        _forget_elsewhere(out)  # (an earlier attempt's word is not this one's)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(BOOTSTRAP_DIR), env.get("PYTHONPATH", "")) if p)
    try:
        child = subprocess.Popen(cmd, env=env, preexec_fn=die_with_parent(os.getpid()))
    except FileNotFoundError:
        print(redact(f"gpuwatch: command not found: {cmd[0]}"), file=sys.stderr)
        return 127
    except PermissionError:
        print(redact(f"gpuwatch: command not executable: {cmd[0]}"), file=sys.stderr)
        return 126
    except OSError as exc:  # (not a program: "Exec format error"; as a shell says, 126)
        print(redact(f"gpuwatch: cannot run {cmd[0]}: {exc.strerror or exc}"), file=sys.stderr)
        return 126
    code, stopped_by = _wait_forwarding_signals(child)
    if enabled and out is not None:  # (its own lines may have nowhere to go: ``_say``)
        if stopped_by is None:
            stopped_by = _until_stopped(lambda: _write_findings(out))
        if stopped_by is not None:  # told to stop: end with the command's own status
            _say(f"gpuwatch: stopped by {signal.Signals(stopped_by).name}; run log in "
                 f"{out} (`gpuwatch analyze {out}` to judge it)")
    return code if code >= 0 else _die_of(-code)


def _say(text: str) -> None:
    """One line on stderr; where its reader has gone (a closed pipe: ``2>&1 | head``),
    none from here on, and the work goes on (the report, the command's status)."""
    try:
        print(text, file=sys.stderr)
    except BrokenPipeError:
        _mute()


def _mute() -> None:
    """Send this process's own output to /dev/null: its reader went away (a closed pipe),
    and the flush at exit would fail again (and turn the exit status into 120)."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            os.dup2(devnull, stream.fileno())


def _die_of(signum: int) -> int:
    """End this process by the signal that ended the command, as the command ended (its
    parent sees a death by signal, a shell "Killed"), leaving no core of this process
    (the command's was its own); 128 + ``signum``, the shell's number for it, where the
    signal does not end this process."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            _mute()
        except (OSError, ValueError):
            pass
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    with contextlib.suppress(ValueError, OSError):  # (SIGKILL's cannot be set: it is)
        signal.signal(signum, signal.SIG_DFL)
    with contextlib.suppress(ValueError, OSError):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signum})
        os.kill(os.getpid(), signum)
    return 128 + signum


class _Stopped(BaseException):  # (not an Exception: the replay's own handlers let it by)
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _until_stopped(work: Callable[[], None]) -> int | None:
    """Run ``work`` (the replay after the command ended) until done, or until a stopping
    signal comes: then it is left unfinished and that signal returned, so the command's
    exit status stays the process's (a SIGTERM during the replay turned 0 into 143)."""
    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOPPING}
    try:
        work()
    except _Stopped as stopped:
        return stopped.signum
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return None


def check_names(settings: Settings) -> None:
    """Every name a setting refers to (target_gpu, gpu_model, prices, detectors and their
    thresholds, the webhook file) exists; ConfigError naming the first that does not."""
    from gpuwatch.detection.engine import engine_from_settings

    engine_from_settings(settings, "rank")
    try:
        settings.slack.url()
    except OSError as exc:
        raise ConfigError(f"gpuwatch config: cannot read slack.webhook_url_file: "
                          f"{exc.strerror}") from None


def run_dir(out: Path | None, job: str) -> tuple[Path, int]:
    """The run directory of one ``gpuwatch run`` and its first attempt number: a new
    ``runs/<job>-<time>-<suffix>`` (attempt 0), or ``--out``, where a reused directory
    continues with the attempt after the last one logged there."""
    from gpuwatch.runlog import create_run_dir, next_attempt

    if out is None:
        try:
            return create_run_dir(Path("runs"), job), 0
        except OSError as exc:
            raise UserError(f"cannot create a run directory under runs/: {exc.strerror}") from None
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory")
    _no_one_elses_outputs(out)
    return out, next_attempt(out)


FINDINGS_NAME = "findings.json"  # a run's findings, in its directory


def _no_one_elses_outputs(out: Path) -> None:
    """UserError where ``out`` holds a file named as a run's outputs but no run's log
    (nor a pointer to one): it is someone else's, and the run would replace it."""
    from gpuwatch.runlog import ELSEWHERE, logs_in
    from gpuwatch.sinks.html_report import REPORT_NAME

    if not out.is_dir() or logs_in(out) or (out / ELSEWHERE).exists():
        return
    for name in (FINDINGS_NAME, REPORT_NAME):
        if (out / name).exists():
            raise UserError(f"--out {out} holds a {name} that no gpuwatch run wrote (it has "
                            "no run log): the run would replace it; choose another directory")


def _write_findings(out: Path) -> None:
    """After the run: every rank's log through the detectors, into findings.json."""
    from gpuwatch.detection.engine import JOB_DETECTORS
    from gpuwatch.detection.replay import analyze
    from gpuwatch.runlog import logged_elsewhere, logs_in, write_whole
    from gpuwatch.sinks.report import findings_json

    if not logs_in(out):
        elsewhere = logged_elsewhere(out)
        if elsewhere is None:
            _say(f"gpuwatch: no training process reported; nothing in {out}")
            return
        _say(f"gpuwatch: the job chose its own run directory: {elsewhere}")
        out = elsewhere
    try:
        settings = load_settings()
        result = analyze([out], settings)
        short = _too_short(result, settings)
        write_whole(out / FINDINGS_NAME, findings_json(result.findings) + "\n")
        told = live_fingerprints(out)  # rank 0 judged across ranks live and told Slack then
        _notify_job_findings(out, [f for f in result.findings
                                   if f.detector in JOB_DETECTORS and f.fingerprint not in told])
    except Exception as exc:  # the run's exit status must stay the command's
        _say(redact(f"gpuwatch: could not analyse {out}: {type(exc).__name__}: {exc}"))
        return
    report = _write_report(out, result.findings)
    verdicts = ", ".join(f"{f.detector} [{f.verdict}]" for f in result.findings) or "none"
    _say(f"gpuwatch: run log in {out}; findings: {verdicts}")
    if short:
        _say(short)
    _say(report)


def _forget_elsewhere(out: Path) -> None:
    from gpuwatch.runlog import ELSEWHERE

    with contextlib.suppress(OSError):
        (out / ELSEWHERE).unlink()


def _write_report(out: Path, findings: list[Any]) -> str:
    """Write the run's report; the line that says where (or why not)."""
    from gpuwatch.sinks.html_report import write_report

    try:
        path = write_report(out, findings)
    except Exception as exc:  # the run's exit status must stay the command's
        return f"gpuwatch: could not write the report: {type(exc).__name__}: {exc}"
    return f"gpuwatch: report in {path}"


# Signals passed on to the command. The ones a terminal sends to its whole foreground
# process group (Ctrl-C, Ctrl-backslash, a hangup) reached the command already when this
# process is in that group, and a second one would cut the command's own graceful
# shutdown short: those are not passed on. The kernel says who sent a signal
# (``si_code``: SI_KERNEL for the terminal's, SI_USER for ``kill``), where Python can
# wait for signals (``sigtimedwait``, Linux); elsewhere a terminal's foreground is
# taken to be the sender.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
FROM_TERMINAL = frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})
SI_KERNEL = 0x80  # siginfo's si_code of a signal the kernel sent (a terminal's keys)


def _wait_forwarding_signals(child: subprocess.Popen[bytes]) -> tuple[int, int | None]:
    """Wait for the child, passing signals on (``FORWARDED``): its exit status
    (``Popen.returncode``: minus the signal that ended it), and the last signal that told
    this process to stop, if any."""
    stopped_by: list[int] = []

    def forward(signum: int, from_terminal: bool) -> None:
        if signum in STOPPING:
            stopped_by.append(signum)
        if child.poll() is None and not (from_terminal and _terminal_foreground()):
            child.send_signal(signum)

    if hasattr(signal, "sigtimedwait"):
        code = _wait_with_siginfo(child, forward)
    else:  # pragma: no cover (macOS)
        code = _wait_with_handlers(child, forward)
    return code, (stopped_by[-1] if stopped_by else None)


def _wait_with_siginfo(child: subprocess.Popen[bytes],
                       forward: Callable[[int, bool], None]) -> int:
    """The signals blocked and taken one by one with their sender (SIGCHLD wakes the
    wait when the child ends); what is still pending at the end is taken, not left to
    kill this process once unblocked."""
    waited = {*FORWARDED, signal.SIGCHLD}
    signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    try:
        while child.poll() is None:
            info = signal.sigtimedwait(waited, 1.0)
            if info is not None and info.si_signo != signal.SIGCHLD:
                forward(info.si_signo, info.si_signo in FROM_TERMINAL
                        and info.si_code == SI_KERNEL)
        while signal.sigtimedwait(waited, 0) is not None:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, waited)
    return child.wait()


def _wait_with_handlers(child: subprocess.Popen[bytes],
                        forward: Callable[[int, bool], None]) -> int:
    previous = {s: signal.signal(s, lambda signum, frame: forward(signum, signum in
                                                                  FROM_TERMINAL))
                for s in FORWARDED}
    try:
        return child.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _terminal_foreground() -> bool:
    """Whether this process is in the foreground process group of its terminal (so a
    signal the terminal sends reaches the whole group, the command included)."""
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def live_fingerprints(out: Path) -> set[str]:
    from gpuwatch.records import Finding
    from gpuwatch.runlog import RunLogReader, logs_in

    return {r.fingerprint for log in logs_in(out) for r in RunLogReader(log)
            if isinstance(r, Finding)}


def _run_id(out: Path) -> str | None:
    """The run id the run's logs name (their meta line's ``run``); None if none does."""
    from gpuwatch.records import Meta
    from gpuwatch.runlog import RunLogReader, logs_in

    for path in logs_in(out):
        with contextlib.suppress(OSError):
            for record in RunLogReader(path):
                if isinstance(record, Meta) and record.run:
                    return record.run
                break  # (the meta line is the first)
    return None


def _notify_job_findings(out: Path, findings: list[Any]) -> None:
    """Cross-rank findings exist only once all ranks' logs meet: tell Slack now, and
    deliver what the ranks left spooled (rank 0 may have died before sending it)."""
    from gpuwatch.sinks.slack import notifier_from_settings
    from gpuwatch.sinks.slack_spool import SPOOL, spool_dirs

    notifier = notifier_from_settings(load_settings(), out / SPOOL / "job",
                                      also=spool_dirs(out), run=_run_id(out))
    if notifier is None:
        return
    notifier.notify([dataclasses.replace(f, state="active") for f in findings])
    if not notifier.flush(timeout=15):
        _say(f"gpuwatch: Slack notifications spooled in {out}; deliver them with "
             f"`gpuwatch alerts flush {out}`")
    notifier.stop()


def cmd_analyze(args: argparse.Namespace) -> int:
    from gpuwatch.detection.replay import analyze
    from gpuwatch.sinks.report import findings_json, findings_text

    settings = load_settings()
    try:
        result = analyze(list(args.runlogs), settings, progress=sys.stderr)
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:  # unreadable (permissions, a directory, an I/O error)
        raise UserError(f"cannot read {exc.filename or 'a run log'}: "
                        f"{exc.strerror or exc}") from None
    print(findings_json(result.findings) if args.json else findings_text(result.findings))
    short = _too_short(result, settings)
    if short:
        print(short, file=sys.stderr)
    if result.skipped_lines:
        print(f"gpuwatch: skipped {result.skipped_lines} unreadable line(s) in "
              f"{len(result.logs)} log(s)", file=sys.stderr)
    return 0


def _too_short(result: Analysis, settings: Settings) -> str | None:
    """Where nothing was found in a run shorter than a run-long rule waits for before it
    judges (``min_run_s``), a line that says so: "nothing held it back" was more than
    was judged."""
    from gpuwatch.detection.engine import engine_from_settings
    from gpuwatch.vocabulary import duration

    if result.findings or not result.ran_s > 0:  # (a log whose clock ran back: nothing)
        return None
    waits = sorted((rule.thresholds["min_run_s"], rule_id) for rule_id, rule in
                   engine_from_settings(settings, "rank").rules.items()
                   if rule.thresholds.get("min_run_s", 0.0) > result.ran_s)
    if not waits:
        return None
    wait, rule_id = waits[0]
    return (f"gpuwatch: the run ran steps for {duration(result.ran_s)}: {rule_id} judges "
            f"runs from {duration(wait)} on (detectors.{rule_id}.min_run_s)")


def _run_dir(path: Path) -> Path:
    if not path.is_dir():
        raise UserError(f"not a run directory: {path}")
    return path


def _compared(before: Path, after: Path) -> Comparison:
    """BEFORE against AFTER, with BEFORE's findings (for its projections)."""
    from gpuwatch.detection.compare import compare
    from gpuwatch.detection.replay import analyze
    from gpuwatch.detection.run_profile import profile

    try:
        runs = profile([_run_dir(before)]), profile([_run_dir(after)])
        findings = analyze([before], load_settings()).findings
        return compare(*runs, findings)
    except (FileNotFoundError, ValueError) as exc:
        raise UserError(str(exc)) from None


def cmd_report(args: argparse.Namespace) -> int:
    from gpuwatch.detection.replay import analyze
    from gpuwatch.detection.run_profile import profile
    from gpuwatch.runlog import write_whole
    from gpuwatch.sinks.html_report import REPORT_NAME, render

    rundir = _run_dir(args.rundir)
    path = args.out or rundir / REPORT_NAME
    _nothing_overwritten(path, [rundir, *([args.compare] if args.compare else [])])
    try:
        run = profile([rundir])
        findings = analyze([rundir], load_settings()).findings
    except FileNotFoundError as exc:
        raise UserError(str(exc)) from None
    comparison = _compared(args.compare, rundir) if args.compare else None
    try:
        write_whole(path, render(run, findings, comparison))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    print(path)
    return 0


def _nothing_overwritten(path: Path, run_dirs: Sequence[Path]) -> None:
    """UserError where the report would be written over a log of these runs (their only
    record), over any other file but an earlier report (findings, a Slack note still
    to send, the user's own), or as a file a reader takes for a run log
    (``run*.jsonl``, a segment)."""
    from gpuwatch.runlog import is_segment, logs_in, segments
    from gpuwatch.sinks.html_report import REPORT_HEAD

    if (path.name.startswith("run") and path.name.endswith(".jsonl")) or is_segment(path.name):
        raise UserError(f"--out {path}: a report is no run log; choose a name such as "
                        "report.html")
    if not path.exists():
        return
    for log in (log for d in run_dirs for log in logs_in(d)):
        for read in (*segments(log), log):
            with contextlib.suppress(OSError):
                if os.path.samefile(path, read):
                    raise UserError(f"--out {path} is the run log {read}: the report would "
                                    "overwrite it")
    try:
        with path.open("rb") as f:
            head = f.read(len(REPORT_HEAD))
    except OSError:
        return  # (a directory or an unreadable file: writing it says what is wrong)
    if head and head != REPORT_HEAD:
        raise UserError(f"--out {path} exists and is no gpuwatch report: the report would "
                        "overwrite it; choose another name")


def cmd_compare(args: argparse.Namespace) -> int:
    from gpuwatch.sinks.comparison import comparison_json, comparison_text

    comparison = _compared(args.before, args.after)
    print(comparison_json(comparison) if args.json else comparison_text(comparison))
    return 0


def cmd_dashboards_export(args: argparse.Namespace) -> int:
    from gpuwatch.dashboards import export, kubernetes_configmap
    from gpuwatch.detection.alerts import dump
    from gpuwatch.runlog import write_whole

    for path in export(args.dir):
        print(path)
    if args.kubernetes:
        args.kubernetes.parent.mkdir(parents=True, exist_ok=True)
        write_whole(args.kubernetes, dump(kubernetes_configmap(), by="gpuwatch dashboards export"))
        print(args.kubernetes)
    return 0


def cmd_dashboards_push(args: argparse.Namespace) -> int:
    from gpuwatch.grafana import push

    grafana = load_settings().grafana
    url = args.url or (grafana.url.get_secret_value() if grafana.url else None)
    if not url:
        raise UserError("dashboards push needs a Grafana URL: --url or GPUWATCH_GRAFANA__URL")
    try:
        token = grafana.secret()
    except OSError as exc:
        raise UserError(f"cannot read grafana.token_file: {exc.strerror}") from None
    if not token:
        raise UserError("dashboards push needs a token: GPUWATCH_GRAFANA__TOKEN or "
                        "GPUWATCH_GRAFANA__TOKEN_FILE")
    try:
        pushed = push(url, token, args.folder or grafana.folder)
    except Exception as exc:  # HTTP and connection errors: one line, token never shown
        raise UserError(f"dashboards push to {mask_url(url)} failed: {type(exc).__name__}: "
                        f"{exc}") from None  # main() redacts the token in every form
    print(redact(f"pushed {', '.join(pushed)} to {mask_url(url)}"))
    return 0


def cmd_rules_export(args: argparse.Namespace) -> int:
    from gpuwatch.detection.alerts import (
        RULES_FILE,
        TESTS_FILE,
        dump,
        kubernetes_rule,
        prometheus_rules,
        promtool_tests,
    )
    from gpuwatch.detection.rules import load_rules
    from gpuwatch.runlog import write_whole

    rules = load_rules()
    url = load_settings(**({"runbook_url": args.runbook_url} if args.runbook_url else {})
                        ).runbook_url.get_secret_value()  # (the flag checked as the setting is)
    args.dir.mkdir(parents=True, exist_ok=True)
    outputs = {args.dir / RULES_FILE: prometheus_rules(rules, url),
               args.dir / TESTS_FILE: promtool_tests(rules, url)}
    if args.kubernetes:
        args.kubernetes.parent.mkdir(parents=True, exist_ok=True)
        outputs[args.kubernetes] = kubernetes_rule(rules, url)
    for path, data in outputs.items():
        write_whole(path, dump(data))
        print(path)
    return 0


def _notifier(spool: Path, also: Sequence[Path] = ()) -> Any:
    """A notifier for the alerts commands: whenever a webhook is configured, whichever
    path of record ``slack.delivery`` names."""
    from gpuwatch.sinks.slack import notifier_from_settings

    try:
        notifier = notifier_from_settings(load_settings(), spool, also=also, always=True)
    except OSError as exc:
        raise UserError(f"cannot read slack.webhook_url_file: {exc.strerror}") from None
    if notifier is None:
        raise UserError("no Slack webhook: set GPUWATCH_SLACK__WEBHOOK_URL or "
                        "GPUWATCH_SLACK__WEBHOOK_URL_FILE")
    return notifier


def cmd_alerts_test(args: argparse.Namespace) -> int:
    import socket
    import tempfile

    from gpuwatch.sinks.slack_spool import Note

    with tempfile.TemporaryDirectory() as tmp:
        notifier = _notifier(Path(tmp) / "test")
        notifier.accept(Note("test", {"summary": f"gpuwatch test message from "
                                                 f"{socket.gethostname()}: alerts reach "
                                                 "this channel.", "job": "test"},
                             time.time()))
        ok = notifier.flush(timeout=30) and notifier.delivered > 0
        notifier.stop()
    if not ok:
        why = notifier.last_failure or "no answer within 30 s"
        print(redact(f"gpuwatch: the test message was not delivered: {why}"), file=sys.stderr)
        return 1
    print("gpuwatch: test message delivered")
    return 0


def cmd_alerts_flush(args: argparse.Namespace) -> int:
    """Deliver what every sender spooled in the run directories, each note once."""
    from gpuwatch.sinks.slack_spool import spool_dirs

    for run in args.runs:
        if not run.is_dir():
            raise UserError(f"no such run directory: {run}")
    spools = [spool for run in args.runs for spool in spool_dirs(run)]
    if not spools:
        print("gpuwatch: nothing spooled")
        return 0
    notifier = _notifier(spools[0], also=spools[1:])
    notifier.group_window_s = 0.0  # nothing more is coming: send at once
    notifier.flush(timeout=args.timeout)
    notifier.stop()
    left = notifier.pending()
    unconfirmed = (f", {notifier.unconfirmed} taken but never answered (counted as posted)"
                   if notifier.unconfirmed else "")
    print(f"gpuwatch: {notifier.delivered} delivered, {left} left, {notifier.silenced} "
          f"silenced, {notifier.dropped} dropped (webhook refused), {notifier.quarantined} "
          f"malformed (moved to slack-spool/quarantine){unconfirmed}")
    if left and notifier.last_failure:
        print(redact(f"gpuwatch: the last attempt: {notifier.last_failure}"), file=sys.stderr)
    return 1 if left else 0


def cmd_alerts_silence(args: argparse.Namespace) -> int:
    from gpuwatch.detection.rules import load_rules
    from gpuwatch.sinks.slack_spool import silence

    if not args.run.is_dir():
        raise UserError(f"no such run directory: {args.run}")
    known = sorted(load_rules())
    if args.detector not in known:
        raise UserError(f"unknown detector {args.detector!r}; one of: {', '.join(known)}")
    try:
        until = silence(args.run, args.detector, args.seconds)
    except OSError as exc:
        raise UserError(f"cannot write the silence into {args.run}: {exc.strerror}") from None
    when = "for good" if until is None else time.strftime("until %Y-%m-%d %H:%M:%S %Z",
                                                          time.localtime(until))
    print(f"gpuwatch: {args.detector} silenced in {args.run} {when}")
    return 0


MAX_DURATION_S = 100 * 365 * 86400.0  # a century: longer is no duration a calendar holds


def _duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``4h``, ``2d`` -> seconds (> 0, at most a century)."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 90s, 30m, 4h, 2d)") from None
    if not 0 < seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"must be > 0 and at most 100 years, got {text}")
    return seconds


def cmd_metrics(args: argparse.Namespace) -> int:
    from gpuwatch.sinks.prometheus import metrics_markdown

    print(metrics_markdown(), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gpuwatch.demo import run_demo

    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is not a directory")
    return run_demo(seconds=args.seconds, out_dir=args.out)


def cmd_doctor(args: argparse.Namespace) -> int:
    from gpuwatch.doctor import report

    for key, value in report():
        print(f"{key:<18} {value}")
    return 0

"""Attack: settings garbage from every source. What must hold: one line naming the key
(never the secret), `gpuwatch run` exits 2 before starting the command, `watch()`
logs it and leaves the job unmonitored without raising; GPUWATCH_ENABLED=false
turns everything off."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from gpuwatch import cli
from gpuwatch.config import ConfigError, load_settings
from gpuwatch.monitor import watch

SECRET = "T0SECRET/B0SECRET/xoxSECRETvalue"
HOOK = f"https://hooks.slack.com/services/{SECRET}"

# (row id, environment, gpuwatch.toml, pyproject.toml, what the one line must name)
ROWS: list[tuple[str, dict[str, str], str, str, str]] = [
    ("env-detectors-not-json", {"GPUWATCH_DETECTORS": "garbage"}, "", "", "GPUWATCH_DETECTORS"),
    ("env-exporter-not-json", {"GPUWATCH_EXPORTER": "garbage"}, "", "", "GPUWATCH_EXPORTER"),
    ("env-prices-not-json", {"GPUWATCH_PRICES": "{\"H100 SXM\":"}, "", "", "GPUWATCH_PRICES"),
    ("env-slack-verdicts-not-json", {"GPUWATCH_SLACK__VERDICTS": "fix_here"}, "", "",
     "GPUWATCH_SLACK__VERDICTS"),
    ("env-slack-whole-webhook", {"GPUWATCH_SLACK": HOOK}, "", "", "GPUWATCH_SLACK"),
    ("env-gpus-torn-json", {"GPUWATCH_GPUS": "[0,"}, "", "", "gpus"),
    ("env-gpus-wrong-shape", {"GPUWATCH_GPUS": "{\"a\": 1}"}, "", "", "gpus"),
    ("env-float-word", {"GPUWATCH_SAMPLE_INTERVAL_S": "fast"}, "", "", "sample_interval_s"),
    ("env-float-negative", {"GPUWATCH_SAMPLE_INTERVAL_S": "-1"}, "", "", "sample_interval_s"),
    ("env-float-nan", {"GPUWATCH_FLUSH_INTERVAL_S": "nan"}, "", "", "flush_interval_s"),
    ("env-int-huge", {"GPUWATCH_RING_CAPACITY": "1e30"}, "", "", "ring_capacity"),
    # (the meta line would not encode: its 64-bit integers, and with it the run's identity)
    ("env-steps-past-64-bits", {"GPUWATCH_TOTAL_STEPS": str(2**64)}, "", "", "total_steps"),
    ("env-attempt-past-64-bits", {"GPUWATCH_ATTEMPT": "9" * 20}, "", "", "attempt"),
    ("env-bool-word", {"GPUWATCH_NVML": "maybe"}, "", "", "nvml"),
    ("env-nested-port", {"GPUWATCH_EXPORTER__PORT": "99999"}, "", "", "exporter.port"),
    ("env-detector-threshold-word", {"GPUWATCH_DETECTORS__HANG__MIN_SECONDS": "soon"}, "", "",
     "detectors"),
    ("env-unknown-variable", {"GPUWATCH_SMAPLE_INTERVAL_S": "1"}, "", "",
     "GPUWATCH_SMAPLE_INTERVAL_S"),
    ("env-binary-value", {"GPUWATCH_JOB": "\udcff\udcfe" * 100}, "", "", "job"),
    ("env-job-with-slash", {"GPUWATCH_JOB": "team/model"}, "", "", "job: no slash"),
    ("env-job-with-newline", {"GPUWATCH_JOB": "a\nb"}, "", "", "job: no slash"),
    ("toml-malformed", {}, "x = = 1\n", "", "gpuwatch.toml"),
    ("toml-not-utf8", {}, "\udcff\udcfe = 1\n", "", "gpuwatch.toml"),
    ("toml-wrong-type", {}, "sample_interval_s = \"fast\"\n", "", "sample_interval_s"),
    ("toml-slack-whole-webhook", {}, f"slack = \"{HOOK}\"\n", "", "slack"),
    ("toml-secret-wrong-type", {}, f"[slack]\nwebhook_url = [\"{HOOK}\"]\n", "",
     "slack.webhook_url"),
    ("toml-table-wrong-type", {}, "[exporter]\nport = [1]\n", "", "exporter.port"),
    ("toml-unknown-key", {}, "smaple_interval_s = 1\n", "", "smaple_interval_s"),
    ("toml-nested-too-deep", {}, "x = " + "[" * 500 + "]" * 500 + "\n", "", "gpuwatch.toml"),
    ("env-json-nested-too-deep", {"GPUWATCH_GPUS": "[" * 1200 + "]" * 1200}, "", "",
     "GPUWATCH_GPUS"),
    ("pyproject-wrong-type", {}, "", "[tool.gpuwatch]\nring_capacity = \"big\"\n",
     "ring_capacity"),
    ("pyproject-malformed", {}, "", "[tool.gpuwatch\n", "pyproject.toml"),
    # names a setting refers to: checked before the job starts
    ("unknown-target-gpu", {"GPUWATCH_TARGET_GPU": "Z100"}, "", "", "Z100"),
    ("unknown-gpu-model", {"GPUWATCH_GPU_MODEL": "Z100"}, "", "", "Z100"),
    ("unknown-price-name", {"GPUWATCH_PRICES": "{\"Z100\": 1.0}"}, "", "", "Z100"),
    ("unknown-detector", {"GPUWATCH_DETECTORS__NOPE__THRESHOLD": "1"}, "", "", "nope"),
    ("unknown-threshold", {}, "[detectors.hang]\nnope = 1\n", "", "nope"),
    # thresholds a detector cannot judge with (it raised at every judgement, unheard)
    ("threshold-nan", {"GPUWATCH_DETECTORS__ITERATION_SPEED__SCALE_OUT_GPUS": "nan"}, "", "",
     "scale_out_gpus"),
    ("threshold-inf", {}, "[detectors.hang]\nmin_seconds = inf\n", "", "min_seconds"),
    ("threshold-negative", {}, "[detectors.data_starvation]\ndata_share = -0.3\n", "",
     "data_share"),
    ("window-inf", {}, "[detectors.hang]\nwindow_s = inf\n", "", "window_s"),
    # paths the OS cannot open; periods that keep the agent thread busy
    ("toml-nul-in-webhook-file", {}, "[slack]\nwebhook_url_file = \"/tmp/a\\u0000b\"\n", "",
     "slack.webhook_url_file"),
    ("toml-nul-in-token-file", {}, "[grafana]\ntoken_file = \"/tmp/a\\u0000b\"\n", "",
     "grafana.token_file"),
    ("env-sample-interval-tiny", {"GPUWATCH_SAMPLE_INTERVAL_S": "1e-9"}, "", "",
     "sample_interval_s"),
    ("env-flush-interval-tiny", {"GPUWATCH_FLUSH_INTERVAL_S": "0.001"}, "", "",
     "flush_interval_s"),
    ("env-detect-interval-tiny", {"GPUWATCH_DETECT_INTERVAL_S": "0.001"}, "", "",
     "detect_interval_s"),
]


def _setup(monkeypatch: pytest.MonkeyPatch, tmp: Path, env: dict[str, str], toml: str,
           pyproject: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if toml:
        (tmp / "gpuwatch.toml").write_bytes(toml.encode("utf-8", "surrogateescape"))
    if pyproject:
        (tmp / "pyproject.toml").write_text(pyproject)


@pytest.mark.parametrize(("env", "toml", "pyproject", "names"),
                         [pytest.param(*row[1:], id=row[0]) for row in ROWS])
def test_gpuwatch_run_exits_2_with_one_line_before_starting_the_command(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        env: dict[str, str], toml: str, pyproject: str, names: str) -> None:
    _setup(monkeypatch, clean_env, env, toml, pyproject)
    code = cli.main(["run", "--out", str(clean_env / "out"), "--", sys.executable, "-c",
                     "open('started', 'w')"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not (clean_env / "started").exists()  # the command never started
    assert len(err.strip().splitlines()) == 1 and names in err, err
    assert "Traceback" not in err and SECRET not in err


@pytest.mark.parametrize(("env", "toml", "pyproject", "names"),
                         [pytest.param(*row[1:], id=row[0]) for row in ROWS])
def test_watch_logs_one_line_and_leaves_the_job_unmonitored_never_raising(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        env: dict[str, str], toml: str, pyproject: str, names: str) -> None:
    _setup(monkeypatch, clean_env, env, toml, pyproject)
    with caplog.at_level(logging.ERROR, logger="gpuwatch"):
        monitor = watch(out_dir=str(clean_env / "out"))
        with monitor.step(samples=1), monitor.phase("compute"):
            pass
        monitor.stop()
    assert not monitor.agent.started
    assert not (clean_env / "out").exists()
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert names in line and "\n" not in line and SECRET not in line


def test_a_run_directory_the_os_cannot_open_is_one_line(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``out_dir`` with a NUL (a TOML "\\u0000"): the path was taken as given and the
    first open raised ValueError: a traceback from `gpuwatch run`, into the job from
    ``watch()``."""
    (clean_env / "gpuwatch.toml").write_text('out_dir = "runs/a\\u0000b"\n')
    code = cli.main(["run", "--", sys.executable, "-c", "open('started', 'w')"])
    err = capsys.readouterr().err
    assert code == 2 and not (clean_env / "started").exists()
    assert len(err.strip().splitlines()) == 1 and "out_dir" in err and "NUL" in err, err


def test_a_run_directory_that_is_a_file_is_said_at_once(
        clean_env: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    """``out_dir`` naming a file: the agent tried 100,000 run-log names, then said none
    was free (and its stop waited out its timeout); the demo trained with no log."""
    taken = clean_env / "taken"
    taken.write_text("")
    assert cli.main(["demo", "--seconds", "1", "--out", str(taken)]) == 2
    assert f"--out {taken} is not a directory" in capsys.readouterr().err
    with caplog.at_level(logging.WARNING, logger="gpuwatch"):
        m = watch(job="j", out_dir=taken, nvml=False, exporter={"enabled": False})
        with m.step(samples=1):
            pass
        m.stop()
    text = caplog.text + capsys.readouterr().err
    assert "not a directory" in text and "no free run-log name" not in text
    assert "did not stop in time" not in text


# watch(**kwargs): bad keyword arguments, the same promise
KWARGS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown-kwarg", {"smaple_interval_s": 1}, "smaple_interval_s"),
    ("float-string", {"sample_interval_s": "x"}, "sample_interval_s"),
    ("dict-not-dict", {"detectors": 5}, "detectors"),
    ("price-not-number", {"prices": {"H100 SXM": "cheap"}}, "prices"),
    ("job-not-string", {"job": ["a"]}, "job"),
    ("secret-not-string", {"slack": {"webhook_url": 12345678}}, "slack.webhook_url"),
    ("ring-capacity-huge", {"ring_capacity": 1 << 40}, "ring_capacity"),
    ("out-dir-with-nul", {"out_dir": "runs/exp\x001"}, "out_dir"),
]


@pytest.mark.parametrize(("kwargs", "names"),
                         [pytest.param(k, n, id=i) for i, k, n in KWARGS])
def test_watch_with_bad_keyword_arguments_never_raises(
        clean_env: Path, caplog: pytest.LogCaptureFixture, kwargs: dict[str, Any],
        names: str) -> None:
    with caplog.at_level(logging.ERROR, logger="gpuwatch"):
        monitor = watch(**kwargs)
    assert not monitor.agent.started
    (line,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert names in line and "12345678" not in line


def test_load_settings_error_is_a_config_error_for_every_row(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer below both: every settings row fails as ConfigError, one line."""
    for _, env, toml, pyproject, _names in ROWS[:25]:
        with monkeypatch.context() as m:
            _setup(m, clean_env, env, toml, pyproject)
            with pytest.raises(ConfigError) as info:
                load_settings()
            assert "\n" not in str(info.value)
        for f in ("gpuwatch.toml", "pyproject.toml"):
            (clean_env / f).unlink(missing_ok=True)


def test_enabled_false_turns_everything_off_even_with_broken_settings(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GPUWATCH_ENABLED", "false")
    monkeypatch.setenv("GPUWATCH_DETECTORS", "garbage")
    monitor = watch(out_dir=str(clean_env / "w"))
    assert not monitor.agent.started and not (clean_env / "w").exists()
    script = "import os, sys; open('started', 'w').write(os.environ.get('PYTHONPATH', ''))"
    code = cli.main(["run", "--out", str(clean_env / "out"), "--", sys.executable, "-c", script])
    assert code == 0, capsys.readouterr().err
    assert "_bootstrap" not in (clean_env / "started").read_text()  # no agent in the child
    assert not (clean_env / "out").exists()  # no run directory, no findings


def test_enabled_false_in_the_config_file_turns_the_agent_off(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (clean_env / "gpuwatch.toml").write_text("enabled = false\n")
    monitor = watch(out_dir=str(clean_env / "w"))
    assert not monitor.agent.started and not (clean_env / "w").exists()
    code = cli.main(["run", "--out", str(clean_env / "out"), "--", sys.executable, "-c",
                     "raise SystemExit(7)"])
    assert code == 7 and not (clean_env / "out").exists()


def test_gpuwatch_run_checks_the_webhook_file_before_starting_the_command(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GPUWATCH_SLACK__WEBHOOK_URL_FILE", str(clean_env / "no-such-file"))
    code = cli.main(["run", "--out", str(clean_env / "out"), "--", sys.executable, "-c",
                     "open('started', 'w')"])
    err = capsys.readouterr().err
    assert code == 2 and "slack.webhook_url_file" in err and len(err.splitlines()) == 1
    assert not (clean_env / "started").exists()


def test_a_token_file_that_is_not_text_is_one_line(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    token = clean_env / "token"
    token.write_bytes(b"\xe8\x00\xff binary")
    monkeypatch.setenv("GPUWATCH_GRAFANA__TOKEN_FILE", str(token))
    code = cli.main(["dashboards", "push", "--url", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and "not UTF-8 text" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("kind", ["fifo", "endless", "large"])
def test_a_webhook_file_that_is_no_small_regular_file_is_one_line_not_a_hang(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], kind: str) -> None:
    """A FIFO nobody writes would block the read (and the job) for ever, /dev/zero would
    fill memory: neither is read; the command is not started, one line says why."""
    path = clean_env / "hook"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "endless":
        path = Path("/dev/zero")
    else:
        path.write_text("https://hooks.slack.com/services/T/B/" + "x" * 100_000)
    monkeypatch.setenv("GPUWATCH_SLACK__WEBHOOK_URL_FILE", str(path))
    code = cli.main(["run", "--out", str(clean_env / "out"), "--", sys.executable, "-c",
                     "open('started', 'w')"])
    err = capsys.readouterr().err
    assert code == 2 and "slack.webhook_url_file: cannot read it" in err
    assert len(err.splitlines()) == 1 and not (clean_env / "started").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_a_duration_on_the_command_line_must_be_a_finite_positive_number(
        value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``gpuwatch demo --seconds nan`` trained nothing and said nothing wrong."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["demo", "--seconds", value])
    assert stop.value.code == 2
    assert "argument --seconds:" in capsys.readouterr().err


def test_a_silence_longer_than_a_calendar_holds_is_refused_and_not_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--for 1e300d`` wrote the silence, then died in a traceback printing its end."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["alerts", "silence", str(tmp_path), "hang", "--for", "1e300d"])
    assert stop.value.code == 2 and "100 years" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_a_broken_rule_file_shipped_with_gpuwatch_never_raises_into_the_job(
        tmp_path: Path, enabled: str) -> None:
    """A detectors/*.yaml that does not parse (a bad install, an edit): ``watch()`` logs
    one line and the job trains on, monitored or switched off alike (the inert monitor
    it falls back to read the rules again, and raised)."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[2]
    shutil.copytree(root / "src", tmp_path / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(root / "detectors", tmp_path / "detectors")
    with (tmp_path / "detectors" / "data_starvation.yaml").open("a") as f:
        f.write("window_s: [unclosed\n")
    job = ("import gpuwatch\nm = gpuwatch.watch(out_dir='out')\n"
           "with m.step(samples=1):\n    pass\nprint('trained')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    proc = subprocess.run([sys.executable, "-c", job], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, env={**env, "GPUWATCH_ENABLED": enabled,
                                                      "PYTHONPATH": str(tmp_path / "src")})
    assert proc.returncode == 0 and proc.stdout.strip() == "trained", proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    if enabled == "true":
        (line,) = [x for x in proc.stderr.splitlines() if "data_starvation.yaml" in x]
        assert "gpuwatch is off for this run" in line


def test_a_config_file_that_is_no_file_is_one_line(clean_env: Path) -> None:
    """A directory, or a link to nowhere, named gpuwatch.toml was ignored without a word."""
    (clean_env / "gpuwatch.toml").mkdir()
    with pytest.raises(ConfigError, match=r"gpuwatch\.toml: not a readable file"):
        load_settings()
    (clean_env / "gpuwatch.toml").rmdir()
    (clean_env / "gpuwatch.toml").symlink_to(clean_env / "gpuwatch.toml")  # (a loop)
    with pytest.raises(ConfigError, match=r"gpuwatch\.toml: not a readable file"):
        load_settings()


def test_a_program_that_cannot_run_and_a_bad_runbook_flag_are_one_line(
        clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is no program ("Exec format error") left ``gpuwatch run`` with a
    traceback's status 2, not a shell's 126; ``rules export --runbook-url javascript:...``
    was written into the alert rules, though the same value as a setting is refused."""
    garbage = clean_env / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program")
    garbage.chmod(0o755)
    assert cli.main(["run", "--", str(garbage)]) == 126
    err = capsys.readouterr().err
    assert "cannot run" in err and "Traceback" not in err and len(err.splitlines()) == 1
    code = cli.main(["rules", "export", str(clean_env / "rules"),
                     "--runbook-url", "javascript:alert(1)"])
    err = capsys.readouterr().err
    assert code == 2 and "runbook_url" in err and not (clean_env / "rules").exists()


def test_watch_in_a_directory_deleted_under_the_job_never_raises(tmp_path: Path) -> None:
    """``watch()`` took the job's working directory to anchor relative paths: deleted
    under the job, ``Path.cwd()`` raised into it, switched on or off."""
    import subprocess

    gone = tmp_path / "gone"
    gone.mkdir()
    job = (f"import os\nos.chdir({str(gone)!r}); os.rmdir({str(gone)!r})\nimport gpuwatch\n"
           "for on in (False, True):\n"
           f"    m = gpuwatch.watch(enabled=on, out_dir={str(tmp_path / 'out')!r},\n"
           "                       exporter={'enabled': False})\n"
           "    with m.step(samples=1):\n        pass\n    m.stop()\nprint('trained')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUWATCH_")}
    proc = subprocess.run([sys.executable, "-c", job], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "trained", proc.stderr[-2000:]

"""Configuration sources and one-line errors that name the key."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwatch.config import ConfigError, disabled, load_settings


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for key in list(__import__("os").environ):
        if key.startswith("GPUWATCH_"):
            monkeypatch.delenv(key)


def test_defaults() -> None:
    s = load_settings()
    assert s.sample_interval_s == 1.0 and s.pcie_interval_s == 5.0 and s.out_dir is None


def test_precedence_arguments_env_toml_pyproject(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.gpuwatch]\njob = "from-pyproject"\nsample_interval_s = 4.0\npcie_interval_s = 9\n')
    assert load_settings().job == "from-pyproject"
    (tmp_path / "gpuwatch.toml").write_text('job = "from-toml"\nsample_interval_s = 3.0\n')
    s = load_settings()
    assert (s.job, s.sample_interval_s, s.pcie_interval_s) == ("from-toml", 3.0, 9.0)
    monkeypatch.setenv("GPUWATCH_JOB", "from-env")
    monkeypatch.setenv("GPUWATCH_GPUS", "[1, 3]")
    s = load_settings()
    assert s.job == "from-env" and s.gpus == [1, 3] and s.sample_interval_s == 3.0
    assert load_settings(job="from-args").job == "from-args"


@pytest.mark.parametrize("setup, key", [
    (lambda p, m: (p / "gpuwatch.toml").write_text("sample_intervall_s = 2\n"),
     "sample_intervall_s"),
    (lambda p, m: (p / "pyproject.toml").write_text("[tool.gpuwatch]\nfoo = 1\n"), "foo"),
    (lambda p, m: m.setenv("GPUWATCH_SAMPLE_INTERVAL", "2"), "GPUWATCH_SAMPLE_INTERVAL"),
    # (settings are read in any case: a typo in lower case is one too)
    (lambda p, m: m.setenv("gpuwatch_tagret_gpu", "A100"), "gpuwatch_tagret_gpu"),
])
def test_unknown_keys_are_named(setup, key, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    setup(tmp_path, monkeypatch)
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert key in message and "\n" not in message


def test_bad_values_are_named_with_what_was_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUWATCH_SAMPLE_INTERVAL_S", "-2")
    with pytest.raises(ConfigError,
                       match=r"sample_interval_s: .*greater than or equal to 0.05.*'-2'"):
        load_settings()
    monkeypatch.delenv("GPUWATCH_SAMPLE_INTERVAL_S")
    with pytest.raises(ConfigError, match="ring_capacity"):
        load_settings(ring_capacity=3)


@pytest.mark.parametrize("body", ['[[tool.gpuwatch]]\njob = "exp"\n',
                                  '[tool]\ngpuwatch = "exp"\n', "tool = 3\n"])
def test_a_pyproject_whose_gpuwatch_settings_are_no_table_is_one_line(
        tmp_path: Path, body: str) -> None:
    """An array of tables or a value where the table goes: a traceback from the settings
    library in every command, and ``gpuwatch run`` never started the job."""
    (tmp_path / "pyproject.toml").write_text(body)
    with pytest.raises(ConfigError, match=r"^gpuwatch config: pyproject.toml: \[tool.gpuwatch\] "
                                          r"is not a table$"):
        load_settings()


def test_the_agent_is_off_for_gpuwatch_enabled_false_in_any_case() -> None:
    """Settings are read in any case, so ``gpuwatch_enabled=false`` turns the agent off
    before anything is loaded, as the upper-case name does (a broken setting beside it
    kept the job from running)."""
    assert disabled({"gpuwatch_enabled": "false", "GPUWATCH_SAMPLE_INTERVAL_S": "abc"})
    assert disabled({"GPUWATCH_ENABLED": "0"})
    assert not disabled({"gpuwatch_enabled": "true"})


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "gpuwatch.toml").write_text("job = \n")
    with pytest.raises(ConfigError, match=r"^gpuwatch config: gpuwatch.toml: "):
        load_settings()


def test_a_renamed_threshold_still_sets_the_new_one() -> None:
    """straggler's compute_ratio became work_ratio: configs written before still work."""
    from gpuwatch.detection.rules import load_rules

    rules = load_rules(overrides={"straggler": {"compute_ratio": 1.5}})
    assert rules["straggler"].thresholds["work_ratio"] == 1.5


# -- URL settings carry credentials: shown masked, used whole ----------------------------

GRAFANA_URL = "https://admin:hunter2secret@grafana.example.com"
DASHBOARD_URL = "https://grafana.example.com/?auth_token=glsa_abcdef0123456789"
RUNBOOK_URL = "https://wikitok3n@wiki.example.com/runbooks.md"


def _shown(settings: object) -> str:
    from gpuwatch.config import Settings

    assert isinstance(settings, Settings)
    return "\n".join([repr(settings), str(settings), settings.model_dump_json(),
                      repr(settings.grafana), str(settings.slack), repr(settings.model_dump()),
                      str(settings.model_dump(mode="json"))])


def test_credentials_in_url_settings_never_appear_in_repr_str_or_dumps(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUWATCH_GRAFANA__URL", GRAFANA_URL)
    monkeypatch.setenv("GPUWATCH_SLACK__GRAFANA_URL", DASHBOARD_URL)
    monkeypatch.setenv("GPUWATCH_RUNBOOK_URL", RUNBOOK_URL)
    s = load_settings()
    shown = _shown(s)
    for secret in ("hunter2secret", "glsa_abcdef", "abcdef0123456789", "wikitok3n"):
        assert secret not in shown, secret
    assert "grafana.example.com" in shown and "wiki.example.com/runbooks.md" in shown
    # the code that connects gets the URL whole
    assert s.grafana.url is not None and s.grafana.url.get_secret_value() == GRAFANA_URL
    assert s.slack.grafana_url is not None
    assert s.slack.grafana_url.get_secret_value() == DASHBOARD_URL
    assert s.runbook_url.get_secret_value() == RUNBOOK_URL


# (each behind a marker found nowhere else in the settings' text)
USERINFO = st.text(string.ascii_letters + string.digits + "-._~", max_size=24)


@settings(max_examples=100, deadline=None)
@given(USERINFO, USERINFO, st.sampled_from(["auth_token", "access_token", "api_key",
                                            "password", "sig", "token"]), USERINFO)
def test_a_url_settings_user_password_and_token_parameters_are_masked_where_shown(
        user: str, password: str, parameter: str, token: str) -> None:
    from gpuwatch.config import GrafanaSettings, Settings, SlackSettings

    host = "grafana.example.com"
    user, password, token = "Uq7" + user, "Pq7" + password, "Tq7" + token
    s = Settings(grafana=GrafanaSettings(url=f"https://{user}:{password}@{host}"),
                 slack=SlackSettings(grafana_url=f"https://{user}@{host}/?{parameter}={token}"),
                 runbook_url=f"https://{user}:{password}@{host}/runbooks.md")
    shown = _shown(s)
    assert user not in shown and password not in shown and token not in shown


@pytest.mark.parametrize("setting, url", [
    ("GPUWATCH_RUNBOOK_URL", "git://wikitok3n@wiki.example.com/runbooks.md"),
    ("GPUWATCH_RUNBOOK_URL", "ftp://wiki:hunter2secret@wiki.example.com/runbooks.md"),
    ("GPUWATCH_GRAFANA__URL", "https://wikitok3n@grafana.example.com"),
])
def test_a_url_settings_validation_error_shows_it_without_credentials(
        monkeypatch: pytest.MonkeyPatch, setting: str, url: str) -> None:
    monkeypatch.setenv(setting, url)
    if setting == "GPUWATCH_GRAFANA__URL":  # (valid as a URL: made wrong another way)
        monkeypatch.setenv("GPUWATCH_GRAFANA__FOLDER", "")
    with pytest.raises(ConfigError) as err:
        load_settings()
    message = str(err.value)
    assert "wikitok3n" not in message and "hunter2secret" not in message, message
    if setting == "GPUWATCH_RUNBOOK_URL":
        assert "runbook_url: an http:// or https:// URL" in message
        assert "wiki.example.com/runbooks.md" in message  # (what was given, masked)


def test_analyze_names_a_bad_runbook_url_without_its_token(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``GPUWATCH_RUNBOOK_URL=git://TOKEN@host gpuwatch analyze DIR`` showed the token in
    its ``(got '...')``."""
    from gpuwatch import cli

    monkeypatch.setenv("GPUWATCH_RUNBOOK_URL", "git://Zr7KpXw2wikitok3n@host.example/x")
    assert cli.main(["analyze", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "runbook_url" in err and "wikitok3n" not in err, err


def test_a_secret_in_the_job_name_is_masked_wherever_the_name_goes() -> None:
    """The job name is the metrics label, the run directory and the report's title: a
    token pasted into it (``--job "exp --token hf_..."``) went everywhere whole."""
    token = "hf_" + "abcdefghijklmnopqrstuvwxyz123456"
    assert token not in load_settings(job=f"exp --token {token}").job


@pytest.mark.parametrize("job", ["a\x85b", "a\u2028b", "a\u2029b"])
def test_a_job_name_with_a_line_separator_is_refused(job: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(job=job)


@pytest.mark.parametrize("addr", ["0.0.0.0:9410", "http://0.0.0.0", "", "node 1", "-node",
                                  "1.2.3.999", "9410"])
def test_an_exporter_address_with_a_port_or_scheme_is_named_before_the_start(
        addr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint's address is checked where settings are read (``gpuwatch run``
    fails at once, in one line): it used to fail only as the agent bound its port, in
    the job, with a warning."""
    monkeypatch.setenv("GPUWATCH_EXPORTER__ADDR", addr)
    with pytest.raises(ConfigError, match=r"^gpuwatch config: exporter\.addr: an IP address "
                                          r"or host name[^\n]*$"):
        load_settings()


@pytest.mark.parametrize(("addr", "bound"), [("0.0.0.0", "0.0.0.0"), ("::", "::"),
                                             ("[::1]", "::1"), ("node-1.cluster.local.",
                                                                "node-1.cluster.local."),
                                             ("trainer_web_1", "trainer_web_1")])
def test_an_exporter_address_may_be_any_ip_or_host_name(addr: str, bound: str) -> None:
    assert load_settings(exporter={"addr": addr}).exporter.addr == bound

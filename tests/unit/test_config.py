"""Configuration sources and one-line errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwatch.config import ConfigError, load_settings


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


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "gpuwatch.toml").write_text("job = \n")
    with pytest.raises(ConfigError, match=r"^gpuwatch config: gpuwatch.toml: "):
        load_settings()


def test_a_renamed_threshold_still_sets_the_new_one() -> None:
    """straggler's compute_ratio became work_ratio: configs written before still work."""
    from gpuwatch.detection.rules import load_rules

    rules = load_rules(overrides={"straggler": {"compute_ratio": 1.5}})
    assert rules["straggler"].thresholds["work_ratio"] == 1.5

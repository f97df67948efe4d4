"""Configuration: one settings model read from arguments, GPUWATCH_* environment
variables, ``gpuwatch.toml`` and ``[tool.gpuwatch]`` in ``pyproject.toml``
(first wins, in that order). Unknown keys are errors, named in one line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


class ConfigError(ValueError):
    """A user error in configuration; its message is one line naming the key."""


def read_secret(value: SecretStr | None, path: Path | None) -> str | None:
    """A secret given directly, else read from a file (stripped); None when neither.
    Raises OSError when the file cannot be read."""
    if value is not None:
        return value.get_secret_value()
    if path is not None:
        return path.read_text().strip() or None
    return None


class ExporterSettings(BaseModel):
    """The per-process Prometheus endpoint: ``port`` + the local rank (0: any free port)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    addr: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9410, ge=0, le=65535)
    max_series: int = Field(default=5000, ge=10)


class GrafanaSettings(BaseModel):
    """Where ``gpuwatch dashboards push`` uploads; the token never leaves this object."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    folder: str = Field(default="gpuwatch", min_length=1)

    def secret(self) -> str | None:
        """The API token: ``token``, else the first line of ``token_file``."""
        return read_secret(self.token, self.token_file)


class SlackSettings(BaseModel):
    """Slack incoming-webhook notifications; the URL is a secret and never printed."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: SecretStr | None = None
    webhook_url_file: Path | None = None
    repeat_interval_s: float = Field(default=4 * 3600.0, gt=0)
    messages_per_second: float = Field(default=1.0, gt=0, le=10)
    group_window_s: float = Field(default=2.0, ge=0, le=300)
    max_group: int = Field(default=50, ge=1, le=500)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    verdicts: list[Literal["move_to_h100", "fix_here", "info"]] = Field(
        default=["move_to_h100", "fix_here"])  # pydantic copies the default per instance
    grafana_url: str | None = None

    def url(self) -> str | None:
        """The webhook: ``webhook_url``, else the first line of ``webhook_url_file``."""
        return read_secret(self.webhook_url, self.webhook_url_file)


class Settings(BaseSettings):
    """Every knob of the agent. Durations in seconds."""

    model_config = SettingsConfigDict(
        env_prefix="GPUWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        toml_file="gpuwatch.toml",
        pyproject_toml_table_header=("tool", "gpuwatch"),
        validate_default=True,
    )

    job: str = Field(default="train", min_length=1, max_length=128,
                     description="Job name: the `job` label and the run directory's prefix.")
    out_dir: Path | None = Field(default=None,
                                 description="Run directory; default a new "
                                             "runs/<job>-<start time>-<suffix>.")
    attempt: int | None = Field(default=None, ge=0,
                                description="First attempt number of this launch in its run "
                                            "directory (`gpuwatch run` sets it); torchrun "
                                            "restarts add to it. Default: the next free one.")
    sample_interval_s: float = Field(default=1.0, gt=0, le=3600,
                                     description="NVML, allocator and host sampling period.")
    pcie_interval_s: float = Field(default=5.0, ge=1, le=3600,
                                   description="PCIe throughput period (each read blocks ~20 ms).")
    flush_interval_s: float = Field(default=0.5, gt=0, le=60,
                                    description="How often steps are assembled and logged.")
    ring_capacity: int = Field(default=65536, ge=1024, le=1 << 24,
                               description="Hot-path ring slots (rounded up to a power of 2).")
    gpus: list[int] | None = Field(default=None,
                                   description="NVML indices to sample; default this rank's GPU.")
    nvml: bool = Field(default=True, description="Sample GPUs through NVML.")
    console: bool = Field(default=False, description="Print a live one-line status.")
    detect_interval_s: float = Field(default=1.0, gt=0, le=600,
                                     description="How often detectors judge (record time).")
    detectors: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per-detector overrides: {id: {threshold, window_s or min_steps: value}}.")
    target_gpu: str = Field(default="H100 SXM", description="Catalogue GPU to project onto.")
    gpu_model: str | None = Field(default=None,
                                  description="Catalogue GPU this job runs on, if NVML cannot say.")
    total_steps: int | None = Field(default=None, gt=0,
                                    description="Planned steps of the run (time-to-finish).")
    prices: dict[str, float] = Field(default_factory=dict,
                                     description="USD per GPU-hour by catalogue name.")
    peers_interval_s: float = Field(default=5.0, ge=0, le=600,
                                    description="Cross-rank summaries through the c10d store "
                                                "(0: off).")
    exporter: ExporterSettings = Field(default_factory=ExporterSettings,
                                       description="Prometheus endpoint of each process.")
    grafana: GrafanaSettings = Field(default_factory=GrafanaSettings,
                                     description="Grafana for `gpuwatch dashboards push`.")
    slack: SlackSettings = Field(default_factory=SlackSettings,
                                 description="Slack notifications of findings.")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            _toml_source(TomlConfigSettingsSource, settings_cls, "gpuwatch.toml"),
            _toml_source(PyprojectTomlConfigSettingsSource, settings_cls, "pyproject.toml"),
        )


def _toml_source(
    source: type[TomlConfigSettingsSource], settings_cls: type[BaseSettings], name: str
) -> PydanticBaseSettingsSource:
    try:
        return source(settings_cls)
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"gpuwatch config: {name}: {exc}") from None


def unknown_env_keys(environ: Mapping[str, str]) -> list[str]:
    """GPUWATCH_* variables that name no setting (a typo would otherwise pass silently)."""
    prefix = Settings.model_config["env_prefix"]
    known = set(Settings.model_fields)
    return sorted(
        name for name in environ
        if name.startswith(prefix)
        and name[len(prefix):].lower().split("__", 1)[0] not in known
    )


DETECTION_KEYS = frozenset({"detect_interval_s", "detectors", "target_gpu", "gpu_model",
                            "total_steps", "prices"})


def detection_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change findings: recorded in each run log so a replay agrees."""
    return settings.model_dump(include=set(DETECTION_KEYS))


def replay_settings(recorded: dict[str, Any], settings: Settings) -> Settings:
    """Settings for replaying a run: what the run recorded, except where the analysing
    user set a detection setting explicitly (argument, environment or config file)."""
    explicit = settings.model_fields_set & DETECTION_KEYS
    update = {k: v for k, v in recorded.items() if k in DETECTION_KEYS and k not in explicit}
    return Settings.model_validate({**settings.model_dump(), **update})


def load_settings(**overrides: Any) -> Settings:
    """Read settings from every source; raise ConfigError with a one-line message."""
    unknown = unknown_env_keys(os.environ)
    if unknown:
        raise ConfigError("gpuwatch config: unknown environment variable " + ", ".join(unknown))
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per ValidationError, naming each bad key and what is wrong with it."""
    parts = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
        else:
            parts.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
    return "gpuwatch config: " + "; ".join(parts)

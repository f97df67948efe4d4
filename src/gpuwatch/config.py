"""Configuration: one settings model read from arguments, GPUWATCH_* environment
variables, ``gpuwatch.toml`` and ``[tool.gpuwatch]`` in ``pyproject.toml``
(first wins, in that order). Every way settings can be wrong (an unknown key, a
bad value, garbage where JSON is expected, a malformed TOML file) is a
``ConfigError`` whose message is one line naming the key and never a secret.
``GPUWATCH_ENABLED=false`` turns the agent off before anything else is read
(``disabled``); the offline commands still read the settings.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    Secret,
    SecretStr,
    ValidationError,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    PyprojectTomlConfigSettingsSource,
    SettingsConfigDict,
    SettingsError,
    TomlConfigSettingsSource,
)

from gpuwatch.redact import SECRET_NAME, mask_url, redact, register, register_environ

_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
# The agent thread's shortest period (s): a shorter one keeps it busy, holding the GIL the
# training loop needs (1 ms periods made a CPU loop 3x slower)
MIN_INTERVAL_S = 0.05
MAX_COUNT = 2**63 - 1  # the largest count a run log holds (its JSON integers are 64-bit)
_SECRET_SECTIONS = frozenset({"slack", "grafana"})  # never echo what was given for these


class ConfigError(ValueError):
    """A user error in configuration; its message is one line naming the key."""


def _no_nul(path: Path) -> Path:
    if "\x00" in str(path):
        raise ValueError("a path cannot hold a NUL character")
    return path


# A file-system path: one the OS can open (no NUL), or the setting is an error.
FsPath = Annotated[Path, AfterValidator(_no_nul)]


class SecretUrl(Secret[str]):
    """A URL that may carry credentials (``https://user:pw@host``, a token as its user,
    ``?auth_token=``). ``repr``, ``str``, JSON dumps and validation errors show it with
    them masked (``mask_url``); ``get_secret_value()`` is the URL itself, for the code
    that connects with it."""

    def _display(self) -> str:
        return mask_url(self.get_secret_value())


def _http_url(url: SecretUrl) -> SecretUrl:
    if not re.match(r"https?://", url.get_secret_value()):
        raise PydanticCustomError("url_scheme", "an http:// or https:// URL")
    return url


# A URL a person opens (the runbooks): http:// or https://.
HttpUrl = Annotated[SecretUrl, AfterValidator(_http_url)]


# A host name: dot-separated labels of letters, digits, inner hyphens and underscores (a
# container's name: trainer_web_1), the last not all digits (a mistyped IP address).
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}\Z)(?:{_LABEL}\.)*(?![0-9]+\.?\Z){_LABEL}\.?\Z")


def _bind_address(addr: str) -> str:
    """An address a server can listen on: an IP address (v4 or v6, brackets allowed) or
    a host name; not a URL, nor an address with its port (that is ``exporter.port``)."""
    bare = addr[1:-1] if addr.startswith("[") and addr.endswith("]") else addr
    try:
        ipaddress.ip_address(bare)
    except ValueError:
        if bare is addr and _HOST_NAME.match(addr):
            return addr
        raise PydanticCustomError(
            "bind_address", "an IP address or host name to listen on, without a scheme or "
            "port (the port is exporter.port)") from None
    return bare


SECRET_FILE_BYTES = 64 * 1024  # a token or a webhook URL: more is no secret file


def read_secret(value: SecretStr | None, path: Path | None) -> str | None:
    """A secret given directly, else read from a file (stripped); None when neither.
    Either way it is registered for redaction. Raises OSError when the file cannot be
    read, is not a regular file (a FIFO would block, /dev/zero never end), is larger
    than ``SECRET_FILE_BYTES`` or is not UTF-8 text."""
    secret = value.get_secret_value() if value is not None else None
    if secret is None and path is not None:
        secret = _secret_file(path).strip() or None
    register(secret)
    return secret


def _secret_file(path: Path) -> str:
    try:
        return read_small_file(path, SECRET_FILE_BYTES).decode()
    except UnicodeDecodeError:
        raise OSError(errno.EINVAL, "not UTF-8 text", str(path)) from None


def read_small_file(path: Path, limit: int) -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes. Raises OSError
    naming it otherwise: a FIFO (its open and read would wait for a writer forever), a
    device (/dev/zero never ends), a larger file, one that grew past ``limit``."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (opening a FIFO must not wait)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        data = os.read(fd, limit + 1) if info.st_size <= limit else b""
        if info.st_size > limit or len(data) > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes", str(path))
        return data
    finally:
        os.close(fd)


class ExporterSettings(BaseModel):
    """The per-process Prometheus endpoint: ``port`` + the local rank (0: any free port)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    addr: Annotated[str, AfterValidator(_bind_address)] = "127.0.0.1"
    port: int = Field(default=9410, ge=0, le=65535)
    max_series: int = Field(default=5000, ge=10)
    # False: leave device metrics (the NVML series) to dcgm-exporter; gpuwatch_gpu_info
    # is still exported so dcgm's series join on UUID.
    device_metrics: bool = True
    # On a normal exit, wait up to this long for one more scrape so Prometheus sees
    # the end-of-run marker (only when something has scraped the endpoint; 0: never;
    # never while dying of an uncaught exception or Ctrl-C).
    final_scrape_s: float = Field(default=20.0, ge=0, le=300)


class GrafanaSettings(BaseModel):
    """Where ``gpuwatch dashboards push`` uploads; the token never leaves this object."""

    model_config = ConfigDict(extra="forbid")

    url: SecretUrl | None = None
    token: SecretStr | None = None
    token_file: FsPath | None = None
    folder: str = Field(default="gpuwatch", min_length=1)

    def secret(self) -> str | None:
        """The API token: ``token``, else the first line of ``token_file``."""
        return read_secret(self.token, self.token_file)


class SlackSettings(BaseModel):
    """Slack incoming-webhook notifications; the URL is a secret and never printed.

    ``delivery`` picks the one path of record: ``in_process`` (this job posts to
    Slack itself), ``alertmanager`` (the generated Prometheus rules do; the agent
    posts nothing) or ``auto`` (in process when a webhook is configured)."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: SecretStr | None = None
    webhook_url_file: FsPath | None = None
    delivery: Literal["auto", "in_process", "alertmanager"] = "auto"
    repeat_interval_s: float = Field(default=4 * 3600.0, ge=60)
    messages_per_second: float = Field(default=1.0, gt=0, le=10)
    group_window_s: float = Field(default=2.0, ge=0, le=300)
    max_group: int = Field(default=50, ge=1, le=500)
    timeout_s: float = Field(default=10.0, gt=0, le=120)
    verdicts: list[Literal["move_to_h100", "fix_here", "info"]] = Field(
        default=["move_to_h100", "fix_here"])  # pydantic copies the default per instance
    silence: list[str] = Field(default_factory=list)  # detectors never re-notified
    grafana_url: SecretUrl | None = None  # (shown in messages with its credentials masked)

    def url(self) -> str | None:
        """The webhook: ``webhook_url``, else the first line of ``webhook_url_file``."""
        return read_secret(self.webhook_url, self.webhook_url_file)

    def in_process(self) -> bool:
        """Whether this job posts findings to Slack itself (the path of record)."""
        if self.delivery == "auto":
            return self.webhook_url is not None or self.webhook_url_file is not None
        return self.delivery == "in_process"

    def problem(self) -> str | None:
        """Why the configured webhook cannot work (never quoting it), or None."""
        if self.webhook_url is None and self.webhook_url_file is None:
            return ("slack.delivery is in_process but no slack.webhook_url is set"
                    if self.delivery == "in_process" else None)
        try:
            url = self.url()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            return f"slack.webhook_url_file: cannot read it ({reason})"
        return webhook_problem(url or "")


def _loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost`` or a loopback address (not a name
    that merely starts like one: 127.0.0.1.example.com)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def webhook_problem(url: str) -> str | None:
    """What makes ``url`` unusable as a webhook (a message without the URL), or None."""
    if not url:
        return "slack webhook URL is empty"
    if any(c.isspace() or ord(c) < 32 for c in url):
        return "slack webhook URL contains whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "slack webhook URL cannot be parsed"
    if parts.scheme not in ("https", "http"):
        return "slack webhook URL must start with https://, as Slack's incoming webhooks do"
    if not parts.hostname or port == 0:
        return "slack webhook URL has no host"
    if parts.scheme == "http" and not _loopback(parts.hostname):
        return ("slack webhook URL must start with https:// (plain http:// only to this "
                "machine: a relay or proxy on localhost)")
    if parts.path in ("", "/"):
        return "slack webhook URL has no path (the /services/... part)"
    return None


class OwnedGpu(BaseModel):
    """A card you own (owned-hardware cost): USD per hour = power draw x electricity price
    + purchase price over its amortisation period (used around the clock)."""

    model_config = ConfigDict(extra="forbid")

    purchase_usd: float = Field(gt=0, description="What the card cost (USD).")
    amortisation_years: float = Field(default=4.0, gt=0, le=20,
                                      description="Years its purchase price is spread over.")
    power_watts: float | None = Field(default=None, gt=0, le=5000,
                                      description="Its draw (W); default NVML's measured "
                                                  "draw, else the catalogue's board power.")


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

    enabled: bool = Field(default=True, description="false: gpuwatch does nothing at all.")
    job: Annotated[str, AfterValidator(redact)] = Field(
        default="train", min_length=1, max_length=128,
        pattern=r"^[^/\\\x00-\x1f\x7f-\x9f\u2028\u2029]+$",
        description="Job name: the `training_job` label, the run directory prefix (no "
                    "slash, backslash, control character or line separator; a secret in it "
                    "is masked, everywhere it is shown).")
    out_dir: FsPath | None = Field(default=None,
                                 description="Run directory; default a new "
                                             "runs/<job>-<start time>-<suffix>.")
    attempt: int | None = Field(default=None, ge=0, le=MAX_COUNT,
                                description="First attempt number of this launch in its run "
                                            "directory (`gpuwatch run` sets it); torchrun "
                                            "restarts add to it. Default: the next free one.")
    sample_interval_s: float = Field(default=1.0, ge=MIN_INTERVAL_S, le=3600,
                                     description="NVML, allocator and host sampling period.")
    pcie_interval_s: float = Field(default=5.0, ge=1, le=3600,
                                   description="PCIe throughput period (each read blocks ~20 ms).")
    runlog_segment_mb: float = Field(default=64.0, ge=0, le=1 << 20,
                                     description="Run-log size (MiB) past which the log is "
                                                 "rotated into a gzip-compressed segment; "
                                                 "0: never rotated.")
    flush_interval_s: float = Field(default=0.5, ge=MIN_INTERVAL_S, le=60,
                                    description="How often steps are assembled and logged.")
    ring_capacity: int = Field(default=65536, ge=1024, le=1 << 24,
                               description="Hot-path ring slots (rounded up to a power of 2).")
    gpus: list[int] | None = Field(default=None,
                                   description="NVML indices to sample; default this rank's GPU.")
    nvml: bool = Field(default=True, description="Sample GPUs through NVML.")
    console: bool = Field(default=False, description="Print a live one-line status.")
    detect_interval_s: float = Field(default=1.0, ge=MIN_INTERVAL_S, le=600,
                                     description="How often detectors judge (record time).")
    detectors: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="Per-detector overrides: {id: {threshold, window_s, for_s, min_steps "
                    "or refresh_s: value}}.")
    target_gpu: str = Field(default="H100 SXM", description="Catalogue GPU to project onto.")
    gpu_model: str | None = Field(default=None,
                                  description="Catalogue GPU this job runs on, if NVML cannot say.")
    total_steps: int | None = Field(default=None, gt=0, le=MAX_COUNT,
                                    description="Planned steps of the run (time-to-finish; "
                                                "a resumed plain loop: those left to it).")
    prices: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="USD per GPU-hour by catalogue name (else the catalogue's dated defaults).")
    owned: dict[str, OwnedGpu] = Field(default_factory=dict,
                                       description="Cards you own, by catalogue name: priced "
                                                   "by power and amortisation, not rent.")
    electricity_usd_per_kwh: float = Field(default=0.15, gt=0, le=10,
                                           description="Electricity price for owned cards "
                                                       "(default: US commercial, 2025).")
    precision: Literal["tf32", "bf16", "fp8"] = Field(
        default="bf16", description="Tensor math the job uses (sets the FLOPS compared).")
    move_min_time_gain: float = Field(default=1.5, ge=1,
                                      description="Time-to-result gain (at the low end of "
                                                  "the range) that alone justifies a move.")
    peers_interval_s: float = Field(default=5.0, ge=0, le=600,
                                    description="Cross-rank summaries through the c10d store "
                                                "(0: off).")
    runbook_url: HttpUrl = Field(
        default=SecretUrl("https://github.com/gpuwatch/gpuwatch/blob/main/docs/runbooks.md"),
        description="Absolute URL of docs/runbooks.md: alerts link "
                                           "to <runbook_url>#<detector>.")
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
    path = Path(name)
    if os.path.lexists(path) and not path.is_file():  # (a directory, a dangling or looping link)
        raise ConfigError(f"gpuwatch config: {name}: not a readable file")
    try:
        return source(settings_cls)
    except (OSError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"gpuwatch config: {name}: {exc}") from None
    except (AttributeError, TypeError):  # (pydantic-settings reads the table's keys)
        table = "[tool.gpuwatch]" if name == "pyproject.toml" else "its top level"
        raise ConfigError(f"gpuwatch config: {name}: {table} is not a table") from None
    except RecursionError:
        raise ConfigError(f"gpuwatch config: {name}: nested too deeply") from None


def _ours(name: str) -> bool:
    """Whether an environment variable is a setting's (``GPUWATCH_*``, in any case: the
    settings read them in any)."""
    return name.upper().startswith(Settings.model_config["env_prefix"])


def unknown_env_keys(environ: Mapping[str, str]) -> list[str]:
    """GPUWATCH_* variables that name no setting (a typo would otherwise pass silently)."""
    prefix = Settings.model_config["env_prefix"]
    known = set(Settings.model_fields)
    return sorted(name for name in environ
                  if _ours(name) and name[len(prefix):].lower().split("__", 1)[0] not in known)


DETECTION_KEYS = frozenset({"detect_interval_s", "detectors", "target_gpu", "gpu_model",
                            "total_steps", "prices", "owned", "electricity_usd_per_kwh",
                            "precision", "move_min_time_gain"})


def detection_settings(settings: Settings) -> dict[str, Any]:
    """The settings that change findings: recorded in each run log so a replay agrees."""
    return settings.model_dump(include=set(DETECTION_KEYS))


def replay_settings(recorded: dict[str, Any], settings: Settings) -> Settings:
    """Settings for replaying a run: what the run recorded, except where the analysing
    user set a detection setting explicitly (argument, environment or config file).
    A recorded value that is not valid (a damaged log) is left out: the caller's holds.
    """
    explicit = settings.model_fields_set & DETECTION_KEYS
    update = {k: v for k, v in recorded.items() if k in DETECTION_KEYS and k not in explicit}
    base = settings.model_dump()
    try:
        return Settings.model_validate({**base, **update})
    except ValidationError as exc:
        bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
    good = {k: v for k, v in update.items() if k not in bad}
    try:
        return Settings.model_validate({**base, **good})
    except ValidationError:
        return settings


def disabled(environ: Mapping[str, str], overrides: Mapping[str, Any] | None = None) -> bool:
    """Whether ``enabled=False`` was passed or ``GPUWATCH_ENABLED`` says false: the agent's
    callers ask this before loading anything, so a broken setting cannot matter."""
    if overrides is not None and overrides.get("enabled") is False:
        return True
    return any(value.strip().lower() in _FALSE for name, value in environ.items()
               if name.upper() == "GPUWATCH_ENABLED")  # (any case, as settings are read)


def load_settings(**overrides: Any) -> Settings:
    """Read settings from every source; raise ConfigError with a one-line message.

    Secrets found (in the settings or in secret-named environment variables) are
    registered for redaction from here on.
    """
    register_environ(os.environ)
    unknown = unknown_env_keys(os.environ)
    if unknown:
        raise ConfigError("gpuwatch config: unknown environment variable " + ", ".join(unknown))
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    except SettingsError as exc:
        raise ConfigError(describe_settings_error(exc, os.environ)) from None
    except (ValueError, TypeError) as exc:  # any other source failure: still one line
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(redact(f"gpuwatch config: {type(exc).__name__}: {exc}")) from None
    except RecursionError:  # JSON in an environment variable nested past the parser's depth
        raise ConfigError(f"gpuwatch config: {_deepest(os.environ)}: nested too deeply") from None
    for secret in (settings.slack.webhook_url, settings.grafana.token):
        if secret is not None:
            register(secret.get_secret_value())
    if problem := settings.slack.problem():  # a webhook that cannot work: say so at start
        raise ConfigError(f"gpuwatch config: {problem}")
    return settings


def _deepest(environ: Mapping[str, str]) -> str:
    """The gpuwatch environment variable whose value nests brackets deepest."""
    def depth(text: str) -> int:
        level = deepest = 0
        for ch in text:
            level += (ch in "[{") - (ch in "]}")
            deepest = max(deepest, level)
        return deepest

    names = [k for k in environ if _ours(k)]
    return max(names, key=lambda k: depth(environ[k]), default="an environment variable")


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad key and what is wrong with it; what was given is shown
    only when it is a short plain value of a setting that holds no secret."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) or "<root>"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{key}'")
            continue
        value = err.get("input")
        secret = (bool(loc) and loc[0] in _SECRET_SECTIONS) or any(SECRET_NAME.match(p)
                                                                  for p in loc)
        if isinstance(value, str) and ("://" in value or "@" in value):
            value = mask_url(value)  # (a URL's user may be a token: git://TOKEN@host)
        shown = (not secret and isinstance(value, (int, float, str, type(None)))
                 and len(repr(value)) <= 80)
        msg = PATTERN_HELP.get(key, err["msg"]) if err["type"] == "string_pattern_mismatch" \
            else err["msg"]
        parts.append(f"{key}: {msg}" + (f" (got {value!r})" if shown else ""))
    return redact("gpuwatch config: " + "; ".join(parts).replace("\n", " "))


# What a setting's pattern asks, in words (a regular expression is no message).
PATTERN_HELP = {"job": "no slash, backslash or control character (it names a directory)"}


def describe_settings_error(exc: SettingsError, environ: Mapping[str, str]) -> str:
    """pydantic-settings' parse failure (JSON garbage in a GPUWATCH_* variable), as one
    line naming the variables involved, never their values."""
    match = re.search(r'field "(\w+)" from source "(\w+)"', str(exc))
    if match is None:
        return redact(f"gpuwatch config: {exc}".replace("\n", " "))
    field, source = match.groups()
    if source != "EnvSettingsSource":
        return f"gpuwatch config: {field}: cannot parse the value from {source}"
    prefix = f"GPUWATCH_{field.upper()}"
    names = sorted(n for n in environ if n.upper() == prefix or n.upper().startswith(prefix + "__"))
    return (f"gpuwatch config: {', '.join(names) or prefix}: not valid for '{field}' "
            "(lists and tables are JSON, e.g. GPUWATCH_GPUS='[0,1]')")

"""Detector rule files (``detectors/*.yaml``): loading, validation and user overrides."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuwatch.config import ConfigError, describe_validation_error

Scope = Literal["rank", "job"]


class Wording(BaseModel):
    """An alternative summary and action for one kind of detection (``variants``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    summary: str
    action: str


class Rule(BaseModel):
    """One detector's rule file. ``window_s`` in seconds, as are ``for_s`` (how long a
    detection must hold, scaled as the window is) and ``refresh_s`` (at least how long
    one that found something stands between judgements); thresholds as documented in it;
    ``variants`` the wording of detections that are not the rule's main case (chosen by
    the detector, e.g. an ``info`` beside a ``move_to_h100``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    title: str
    scope: Scope
    verdict: Literal["move_to_h100", "fix_here", "info"]
    severity: Literal["info", "warning", "critical"]
    window_s: float = Field(gt=0)
    for_s: float = Field(default=0.0, ge=0)
    min_steps: int = Field(default=0, ge=0)
    refresh_s: float = Field(default=0.0, ge=0)
    thresholds: dict[str, Annotated[float, Field(ge=0)]]  # (ratios, seconds, counts, bytes)
    summary: str
    action: str
    runbook: str
    variants: dict[str, Wording] = Field(default_factory=dict)


def rules_dir() -> Path:
    """The shipped rule files: inside the wheel, or at the repository root when editable."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[1] / "detectors", here.parents[3] / "detectors"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("gpuwatch's detectors/ rule files are missing from the install")


def load_rules(
    directory: Path | None = None,
    overrides: Mapping[str, Mapping[str, float]] | None = None,
) -> dict[str, Rule]:
    """Every rule by id, with user ``overrides``: {detector: {threshold or window_s: value}}.

    Raises ConfigError (one line) for a malformed file or an override naming an
    unknown detector or threshold.
    """
    rules: dict[str, Rule] = {}
    for path in sorted((directory or rules_dir()).glob("*.yaml")):
        rule = _rule_file(path, path.stat().st_mtime_ns)
        rules[rule.id] = rule
    for detector, values in (overrides or {}).items():
        if detector not in rules:
            raise ConfigError(f"gpuwatch config: unknown detector 'detectors.{detector}'; "
                              f"choose from {', '.join(sorted(rules))}")
        rules[detector] = _override(rules[detector], values)
    return rules


@lru_cache(maxsize=256)
def _rule_file(path: Path, mtime_ns: int) -> Rule:
    """One rule file, parsed once per version (``mtime_ns``): a replay builds an engine
    per log, and parsing YAML is most of what that costs."""
    try:
        rule = Rule.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"gpuwatch rules: {path.name}: {exc}".replace("\n", " ")) from None
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc).replace(
            "gpuwatch config:", f"gpuwatch rules: {path.name}:")) from None
    if rule.id != path.stem:
        raise ConfigError(
            f"gpuwatch rules: {path.name}: id {rule.id!r} must match the file name")
    return rule


TIMING = ("window_s", "for_s", "min_steps", "refresh_s")  # a rule's keys beside thresholds
# Thresholds renamed, by rule: the old name still sets the new one (configs and recorded
# run logs written before the rename).
RENAMED: dict[str, dict[str, str]] = {"straggler": {"compute_ratio": "work_ratio"}}


def _override(rule: Rule, values: Mapping[str, float]) -> Rule:
    update: dict[str, Any] = {}
    thresholds = dict(rule.thresholds)
    renamed = RENAMED.get(rule.id, {})
    for key, value in values.items():
        key = renamed.get(key, key)
        if key in TIMING:
            update[key] = value
        elif key in thresholds:
            thresholds[key] = float(value)
        else:
            raise ConfigError(f"gpuwatch config: unknown key 'detectors.{rule.id}.{key}'; "
                              f"{rule.id} has "
                              + ", ".join([*TIMING, *thresholds]))
    try:
        return Rule.model_validate({**rule.model_dump(), **update, "thresholds": thresholds})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc).replace(
            "gpuwatch config: ", f"gpuwatch config: detectors.{rule.id}.")) from None

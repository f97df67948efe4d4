"""Rule files and the ring all-reduce model (the projection: test_projection.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwatch.config import ConfigError
from gpuwatch.detection.engine import JOB_DETECTORS, RANK_DETECTORS
from gpuwatch.detection.rules import load_rules, rules_dir


def test_every_detector_has_a_valid_rule_file_and_code() -> None:
    rules = load_rules()
    assert set(rules) == set(RANK_DETECTORS) | set(JOB_DETECTORS)
    for rule in rules.values():
        assert (rule.scope == "job") == (rule.id in JOB_DETECTORS)
        assert rule.runbook.startswith("docs/runbooks.md#")
        assert (rules_dir() / f"{rule.id}.yaml").is_file()


def test_a_malformed_rule_file_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("id: broken\nscope: everywhere\n")
    with pytest.raises(ConfigError, match=r"^gpuwatch rules: broken.yaml: ") as err:
        load_rules(tmp_path)
    assert "\n" not in str(err.value)




@pytest.mark.parametrize("template", ["Rank {rank[0]} stalled", "{rank.real.x}", "{rank:%Q}"])
def test_a_rule_template_that_cannot_be_filled_gives_the_title_never_an_error(
        template: str) -> None:
    """A user's rule file whose summary indexes, reaches into or formats a field in a way
    its value does not allow: the finding says the rule's title instead."""
    from gpuwatch.detection.context import Detection
    from gpuwatch.detection.engine import _fill

    found = Detection({"stalled_seconds": 90.0}, [3], text={"rank": 3})
    assert _fill(template, found, "Hang") == "Hang"
    assert _fill("Rank {rank} stalled {stalled_seconds:.0f} s", found, "Hang") == \
        "Rank 3 stalled 90 s"

"""A service the tests need that is down fails them under the README's test command and CI,
and skips them only under a bare pytest."""

from __future__ import annotations

import pytest

from tests.integration.fixtures._service import require


def down() -> str:
    return "connection refused"


@pytest.mark.parametrize(
    ("variables", "outcome"),
    [
        ({"JULIARUN_REQUIRE_SERVICES": "1"}, pytest.fail.Exception),
        ({"CI": "true"}, pytest.fail.Exception),
        ({"JULIARUN_REQUIRE_SERVICES": "1", "CI": "false"}, pytest.fail.Exception),
        ({}, pytest.skip.Exception),
    ],
)
def test_a_missing_service_fails_unless_run_by_hand(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], outcome: type[BaseException]
) -> None:
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("JULIARUN_REQUIRE_SERVICES", raising=False)
    for key, value in variables.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(outcome, match="rabbitmq is not up \\(connection refused\\); start it"):
        require("rabbitmq", down)


def test_a_service_that_answers_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    require("rabbitmq", lambda: None)


def test_scripts_test_requires_the_services() -> None:
    from pathlib import Path

    script = (Path(__file__).resolve().parents[2] / "scripts" / "test").read_text()
    assert "export JULIARUN_REQUIRE_SERVICES=1" in script

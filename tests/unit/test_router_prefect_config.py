"""The router's ``prefect`` configuration (docs/router.md, "Sign-in in front of Prefect"): the
documented example validates, and each rule refuses bad input naming the field; ``juliarun
token`` says what to do when it cannot tell which session is meant."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from juliarun.errors import SpecError
from juliarun.router import RouterConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "router.md"


def documented() -> dict[str, Any]:
    (block,) = re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)
    data: dict[str, Any] = yaml.safe_load(block)
    return data


def test_the_documented_configuration_validates_with_the_default_rule() -> None:
    config = RouterConfig.model_validate(documented())
    (front,) = config.prefect
    assert (front.path, front.upstream, front.namespace) == (
        "/prefect",
        "http://127.0.0.1:4200",
        "team-a",
    )
    # may create Jobs in the namespace: the tenant's edit role
    assert (front.verb, front.group, front.resource, front.name) == ("create", "batch", "jobs", "")


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"path": "/s/prefect"}], r"prefect\.0\.path: /s/ is the router's own"),
        ([{"path": "/storage"}], r"prefect\.0\.path: /storage/ is the router's own"),
        ([{"path": "/.juliarun"}], r"prefect\.0\.path: String should match pattern"),
        ([{"path": "/Prefect/"}], r"prefect\.0\.path: String should match pattern"),
        ([{"upstream": "http://p:4200/api"}], r"prefect\.0\.upstream: .*must name only scheme"),
        ([{"upstream": "ftp://p"}], r"prefect\.0\.upstream: .*must be an http\(s\)://host:port"),
        ([{"namespace": "Team_A"}], r"prefect\.0\.namespace"),
        ([{"role": "admin"}], r"prefect\.0\.role: unknown field \(not allowed\)"),
        ([{}, {}], r"path /prefect is served twice"),
        ([{}, {"path": "/prefect/b"}], r"path /prefect is served twice \(or holds another's\)"),
        ([{"path": "/oauth2"}], r"path /oauth2 holds the sign-in callback /oauth2/callback"),
    ],
)
def test_bad_entries_are_refused_naming_the_field(
    entries: list[dict[str, Any]], message: str
) -> None:
    data = documented()
    base = data["prefect"][0]
    data["prefect"] = [{**base, **e} for e in entries]
    with pytest.raises(SpecError, match=message):
        RouterConfig.model_validate(data)


def test_token_without_an_issuer_or_one_session_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from juliarun.cli_login import app

    for var in ("ISSUER", "CLIENT_ID", "SCOPES", "CA", "KUBERNETES", "CLIENT_SECRET"):
        monkeypatch.delenv(f"JULIARUN_OIDC_{var}", raising=False)
    monkeypatch.setenv("JULIARUN_HOME", str(tmp_path))
    done = CliRunner().invoke(app, ["token"])
    assert done.exit_code == 1
    assert done.output.splitlines() == [
        "error: 0 cached sessions and no issuer given",
        "hint: pass --issuer (see `juliarun whoami`), or `juliarun login` first",
    ]
    done = CliRunner().invoke(app, ["token", "--issuer", "https://id.example.org"])
    assert done.exit_code == 1
    assert done.output.splitlines()[0].startswith("error: not signed in")

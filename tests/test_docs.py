"""The README stays true: every setting and route is documented, and the quick start's
test command is the one CI runs."""

from __future__ import annotations

import re
import tomllib

import modelmanager
from config import Config, settings_table
from modelmanager.contract.openapi import openapi_document
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_with_its_default() -> None:
    for name, default, _help in settings_table():
        row = re.search(rf"^\| `{name}` \| `MM_{name}` \| `([^`]*)` \|", README, re.M)
        assert row, f"setting {name} is missing from the README's settings table"
        assert row.group(1) == str(default), f"README shows a stale default for {name}"


def test_every_route_is_documented() -> None:
    from modelmanager.http_api import create_app

    class _NoApi:  # routes only; no request is made
        pass

    app = create_app(_NoApi(), Config())  # type: ignore[arg-type]
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<[^>]+>", "<id>", rule.rule)
        assert path in README, f"route {rule.rule} is not in the README"


def test_quick_start_test_command_is_what_ci_runs() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README.split("## Quick start")[1], re.S)
    install_and_run, test_command = blocks[0], blocks[1]
    assert "main.py --simulate" in install_and_run and "requirements.txt" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.strip() in ci.splitlines()


def test_every_setting_has_a_help_text() -> None:
    assert all(help_text.strip() for _, _, help_text in settings_table())


def test_package_version_is_pyprojects_and_the_openapi_documents() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert modelmanager.__version__ == project["version"]
    assert openapi_document()["info"]["version"] == modelmanager.__version__

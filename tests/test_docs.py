"""The README stays true: every setting and route is documented, the quick start's test
command is the one CI runs, the requirements are split into runtime and development, and
the text speaks of the product to its users."""

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


def _quick_start() -> tuple[str, str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", README.split("## Quick start")[1], re.S)
    return blocks[0].strip(), blocks[1].strip()


def test_quick_start_test_command_is_what_ci_runs() -> None:
    install_and_run, test_command = _quick_start()
    assert "main.py --simulate" in install_and_run and "requirements.txt" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\n" not in test_command and test_command in ci.splitlines()


def test_quick_start_runs_with_the_runtime_and_tests_with_the_development_requirements() -> None:
    install_and_run, test_command = _quick_start()
    assert install_and_run == (
        "python3 -m venv .venv && .venv/bin/pip install -r requirements.txt"
        " && .venv/bin/python main.py --simulate"
    )
    assert "requirements-dev.txt" in test_command and "-m pytest" in test_command
    assert test_command.index("requirements-dev.txt") < test_command.index("-m pytest")


DEV_TOOLS = {
    "pytest",
    "responses",
    "pytest-timeout",
    "hypothesis",
    "schemathesis",
    "ruff",
    "mypy",
    "types-requests",
    "ollama",
    "openai",
}


def _pins(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.split("==")[0] for line in lines if line and not line.startswith("#")]


def test_requirements_split_into_runtime_and_development() -> None:
    runtime = _pins("requirements.txt")
    assert {"flask", "waitress", "requests", "nvidia-ml-py"} <= set(runtime)
    assert not set(runtime) & DEV_TOOLS, "development tools in the runtime requirements"
    dev = _pins("requirements-dev.txt")
    assert dev[0] == "-r requirements.txt"
    assert set(dev[1:]) == DEV_TOOLS


def test_ci_creates_the_venv_builds_fake_nvml_lints_and_types_then_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    _, test_command = _quick_start()
    steps = [
        "python3 -m venv .venv",
        "-r requirements-dev.txt",  # ruff and mypy must be installed before they run
        "fake-nvml/build.sh",
        ".venv/bin/ruff check .",
        ".venv/bin/ruff format --check .",
        ".venv/bin/mypy",
        test_command,
    ]
    at = [next(i for i, line in enumerate(ci) if step in line) for step in steps]
    assert at == sorted(at), list(zip(steps, at, strict=True))


def test_readme_runs_the_programs_with_the_venv_python() -> None:
    for program in ("main.py", "tools/submit_test_job.py"):
        assert not re.search(rf"^\s*python3? {re.escape(program)}", README, re.M), program
    assert ".venv/bin/python tools/submit_test_job.py" in README


# words about how the project was made, which a user cannot decode
NOT_FOR_USERS = [
    "this session",
    "same session",
    "one session",
    "the issue",
    "customer",
    "this round",
    "the seed's shape",
    "the seed's 10 small models",
    "this design",
]


def test_readme_and_requirements_speak_of_the_product_only() -> None:
    for name in ("README.md", "requirements.txt", "requirements-dev.txt"):
        text = (ROOT / name).read_text().lower()
        for phrase in NOT_FOR_USERS:
            assert phrase not in text, f"{name} says {phrase!r}"


def test_every_setting_has_a_help_text() -> None:
    assert all(help_text.strip() for _, _, help_text in settings_table())


def test_package_version_is_pyprojects_and_the_openapi_documents() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert modelmanager.__version__ == project["version"]
    assert openapi_document()["info"]["version"] == modelmanager.__version__

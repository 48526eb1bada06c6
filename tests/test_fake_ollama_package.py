"""The simulator as a package: its old path still works, it runs as ``python3 -m``, it stays
standalone, its modules stay small, and the README lists every model it knows."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests

import modelmanager.simulator as package
import tools.fake_ollama as shim
from modelmanager.simulator import CATALOG
from tests.conftest import ROOT, free_port

TIMEOUT = 10.0
PACKAGE_DIR = ROOT / "modelmanager" / "simulator"


def test_the_old_module_re_exports_the_package() -> None:
    for name in shim.__all__:
        if not name.startswith("_"):
            assert getattr(shim, name) is getattr(package, name), name
    assert set(package.__all__) <= set(shim.__all__)
    for name in ("FakeOllama", "CATALOG", "ModelSpec", "RunnerOptions", "load_seconds",
                 "generate_seconds", "embed_seconds", "parse_keep_alive", "main"):  # fmt: skip
        assert name in package.__all__


@pytest.mark.parametrize(
    "argv",
    [["-m", "modelmanager.simulator"], [str(ROOT / "tools" / "fake_ollama.py")]],
    ids=["module", "old-path"],
)
def test_both_ways_to_run_it(argv: list[str], tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, *argv, "--port", str(port), "--time-scale", "0.02"]
    # from another directory the old path still finds the package; -m needs the repository
    cwd = ROOT if argv[0] == "-m" else tmp_path
    with subprocess.Popen(
        cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == f"fake ollama listening on http://127.0.0.1:{port}"
            base = f"http://127.0.0.1:{port}"
            body = {"model": "Qwen2.5:0.5B", "prompt": "hi", "stream": False}
            assert requests.post(base + "/api/generate", json=body, timeout=TIMEOUT).ok
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_package_imports_nothing_of_the_service() -> None:
    code = (
        "import sys, modelmanager.simulator\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'waitress', "
        "'werkzeug', 'tools', 'config') or (m.startswith('modelmanager.') and not "
        "m.startswith(('modelmanager.simulator', 'modelmanager.names'))))\n"
        "print(bad)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
    main_py = (ROOT / "main.py").read_text()
    assert not re.search(r"^\s*(from|import) tools\b", main_py, re.M)


def test_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE_DIR.glob("*.py")}
    assert len(sizes) >= 8
    assert max(sizes.values()) <= 500, sizes


def test_readme_lists_every_catalog_model() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The Ollama simulator")[1].split("\n## ")[0]
    for name, spec in CATALOG.items():
        row = re.search(rf"^\| `{re.escape(name)}` \| (installed|pull) \|", section, re.M)
        assert row, f"{name} is missing from the README's model table"
        assert row.group(1) == ("installed" if spec.installed else "pull"), name
        assert f"{spec.disk_bytes:,}" in section and f"{spec.vram_bytes:,}" in section, name


def test_a_failed_start_leaves_no_thread_behind() -> None:
    first = package.FakeOllama().start()
    try:
        before = {t.ident for t in threading.enumerate()}
        clash = package.FakeOllama(port=first.port)
        with pytest.raises(OSError):
            clash.start()  # the port is taken
        assert {t.ident for t in threading.enumerate()} <= before
        clash.stop()
    finally:
        first.stop()

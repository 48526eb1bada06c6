"""The live dashboard: ``GET /`` answers Ollama clients with Ollama's text and browsers
with the page; ``GET /api/dashboard`` carries what the page shows; and the page, opened in
a real headless Chromium, draws the GPU bar and the loaded model."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from modelmanager.contract.dashboard import Dashboard
from tests.conftest import Service, wait_until

MODEL = "qwen2.5:0.5b"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
KEY = "d" * 16


@pytest.mark.parametrize(
    "accept",
    [None, "*/*", "application/json", "text/plain", "text/html;q=0.5, text/plain"],
    ids=["none", "any", "json", "plain", "plain-preferred"],
)
def test_root_answers_ollama_clients_as_ollama_does(
    sim: Any, make_service: Any, accept: str | None
) -> None:
    svc: Service = make_service(sim, API_KEY=KEY)  # "/" needs no key, as in Ollama
    headers = {"Accept": accept} if accept else {}
    r = requests.get(f"{svc.url}/", headers=headers, timeout=10)
    assert r.status_code == 200
    assert r.text == "Ollama is running"
    assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert r.headers["Vary"] == "Accept"
    head = requests.head(f"{svc.url}/", headers=headers, timeout=10)
    assert head.status_code == 200 and head.text == ""


def test_root_serves_the_page_to_browsers(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, API_KEY=KEY)
    r = requests.get(f"{svc.url}/", headers={"Accept": BROWSER_ACCEPT}, timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>Model Manager</title>" in r.text and 'fetch("api/dashboard"' in r.text
    assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
    # nothing is fetched from elsewhere
    assert "http://" not in r.text and "https://" not in r.text and "src=" not in r.text
    assert requests.head(f"{svc.url}/", headers={"Accept": BROWSER_ACCEPT}, timeout=10).ok


def test_dashboard_data_needs_the_api_key(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, API_KEY=KEY)
    assert requests.get(f"{svc.url}/api/dashboard", timeout=10).status_code == 401
    auth = {"Authorization": f"Bearer {KEY}"}
    r = requests.get(f"{svc.url}/api/dashboard", headers=auth, timeout=10)
    assert r.status_code == 200 and Dashboard.model_validate(r.json())


def dashboard(svc: Service) -> dict[str, Any]:
    r = svc.session.get(f"{svc.url}/api/dashboard", timeout=10)
    assert r.status_code == 200, r.text
    Dashboard.model_validate(r.json())  # the documented shape
    return dict(r.json())


def busy_service(sim: Any, make_service: Any, **config: Any) -> Service:
    """A service with MODEL loaded and two of its jobs held in flight, more waiting, and
    one failed job; returns once the dashboard's data shows it."""
    svc: Service = make_service(sim, **config)
    svc.wait_done([svc.submit(model="no-such-model:1b", prompt="fails")])
    sim.set_gate(True)
    for priority in ("high", "normal", "low", "low"):
        svc.submit(model=MODEL, prompt="held", priority=priority)

    def ready() -> bool:
        d = dashboard(svc)
        models = [m for m in d["models"] if m["model"] == MODEL]
        return bool(models) and models[0]["state"] == "ready" and models[0]["in_flight"] == 2

    wait_until(ready, what="model loaded with jobs in flight")
    return svc


def test_dashboard_data_shows_gpus_models_queue_events_and_jobs(
    sim: Any, make_service: Any
) -> None:
    svc = busy_service(sim, make_service)
    d = dashboard(svc)
    (node,) = d["nodes"]
    assert node["name"] == "local" and node["up"] and node["source"] == "nvml"
    (gpu,) = node["gpus"]
    assert gpu["id"] == "local:gpu0" and gpu["total"] == 24 * 1024**3
    (segment,) = gpu["segments"]
    assert segment["model"] == MODEL and segment["managed"] and segment["bytes"] > 0
    assert gpu["other"] == max(0, gpu["used"] - segment["bytes"])
    (model,) = d["models"]
    assert model["in_flight"] == 2 and len(model["jobs"]) == 2
    assert {j["priority"] for j in model["jobs"]} == {"high", "normal"}
    assert model["ollama_vram_bytes"] == segment["bytes"]
    (queue,) = d["queue"]
    assert (queue["model"], queue["high"], queue["normal"], queue["low"]) == (MODEL, 0, 0, 2)
    kinds = [(e["kind"], e["what"]) for e in d["events"]]
    assert kinds[:2] == [("load", "loaded"), ("load", "start")]  # newest first
    assert d["jobs"]["by_status"]["failed"] == 1 and d["jobs"]["by_status"]["running"] == 2
    assert d["jobs"]["failures"][0]["error_code"] == "MODEL_NOT_FOUND"
    assert len(d["jobs"]["recent"]) == 5 and d["accepting"]
    assert d["waiters"] == {"waiting": 0, "limit": 8}
    sim.set_gate(False)


def test_dashboard_data_in_budget_mode(sim: Any, make_service: Any) -> None:
    svc: Service = make_service(sim, nvml=False, VRAM_BUDGET_MB=8192)
    svc.wait_done([svc.submit(model=MODEL, prompt="x")])
    (gpu,) = dashboard(svc)["nodes"][0]["gpus"]
    assert gpu["id"] == "local:budget" and gpu["total"] == 8 * 1024**3
    assert [s["model"] for s in gpu["segments"]] == [MODEL]


# ------------------------------------------------------------------ in a browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium once (Debian's package; .ci/run installs it); its stdout."""
    assert CHROMIUM
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # CI runs as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            "--window-size=1400,1200",
            # the page's timers and fetches run before the DOM is dumped or the shot taken
            "--virtual-time-budget=3000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="NO BROWSER: chromium is not installed, so the dashboard was not tested in a "
    "browser (apt-get install chromium; .ci/run does)",
)
def test_dashboard_page_in_headless_chromium(sim: Any, make_service: Any, tmp_path: Path) -> None:
    svc = busy_service(sim, make_service)
    profile = tmp_path / "chromium-profile"

    def drawn() -> str | None:
        dom = chromium(profile, "--dump-dom", f"{svc.url}/")
        has_bar = 'data-gpu="local:gpu0"' in dom
        has_model = f'<tr data-model="{MODEL}">' in dom
        return dom if has_bar and has_model else None

    dom = wait_until(drawn, timeout=60, interval=0.5, what="GPU bar and loaded model drawn")
    assert "Ollama up" in dom and "MODEL_NOT_FOUND" in dom
    assert f'class="seg" data-model="{MODEL}"' in dom  # the model's part of the bar
    shot = tmp_path / "dashboard.png"
    chromium(profile, f"--screenshot={shot}", f"{svc.url}/")
    assert png_size(shot) == (1400, 1200)
    assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
    sim.set_gate(False)


@pytest.mark.skipif(CHROMIUM is None, reason="NO BROWSER: chromium is not installed")
def test_dashboard_page_asks_for_the_api_key(sim: Any, make_service: Any, tmp_path: Path) -> None:
    svc: Service = make_service(sim, API_KEY=KEY)
    dom = chromium(tmp_path / "chromium-profile", "--dump-dom", f"{svc.url}/")
    assert '<section id="keyform" style="display: block;">' in dom
    assert "API key needed" in dom

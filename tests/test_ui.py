"""The Dagster UI in a real browser: `dagster dev` serves the code location, headless Chromium opens
the asset graph, and the page names every asset. The screenshot stays in the test's temp folder
(path printed; `pytest -s` shows it).

Skipped when Chromium is absent (`apt-get install -y chromium`; `.ci/run` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = ["corpus", "tfidf", "label_embeddings", "label_tree", "disentangled_tree", "rankers", "calibration", "metrics"]
# with several groups the global lineage shows one box per group; a group's page shows its assets
GROUPS = {"xr_linear": ASSETS, "xr_transformer": ["encoder", "refined_tree", "rankers", "metrics"],
          "xlgen": ["xlgen_label_clusters", "xlgen_base_model", "xlgen_mcg_metrics"]}
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium; .ci/run installs it)"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post_graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _wait_for_location(base: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> None:
    """Until the webserver answers and the `xmc` code location has loaded."""
    query = "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            entries = _post_graphql(base, query)["data"]["workspaceOrError"]["locationEntries"]
            if any(e["name"] == "xmc" and e["loadStatus"] == "LOADED" for e in entries):
                return
        except (OSError, KeyError, TypeError, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"dagster dev not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop dagster dev and its children (webserver, daemon, code server) by process group."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:  # seen: an instance that had launched a run ignored SIGTERM
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


@pytest.fixture
def dagster_dev(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    port = _free_port()
    log = tmp_path / "dagster_dev.log"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    dagster = Path(sys.executable).with_name("dagster")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_location(base, proc, log)
        # Dismiss the "Join the Dagster community" modal that covers the first page on localhost.
        assert "errors" not in _post_graphql(base, "mutation { setNuxSeen }")
        yield base
    finally:
        _stop(proc)


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    profile.mkdir(exist_ok=True)
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--window-size=1400,900", "--virtual-time-budget=15000",
            *extra, url]
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


def test_asset_graph_page_names_every_asset(dagster_dev, tmp_path):
    url = f"{dagster_dev}/asset-groups"  # the global asset lineage graph: one box per group
    shot = tmp_path / "graph.png"
    proc = _chromium(url, tmp_path, f"--screenshot={shot}")
    assert shot.is_file() and shot.stat().st_size > 10_000, proc.stderr[-2000:]
    print(f"\nscreenshot of {url}: {shot}")
    dom = _chromium(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert all(group in dom.stdout for group in GROUPS), dom.stdout[:2000]
    assert "Join the Dagster community" not in dom.stdout

    for group, names in GROUPS.items():
        url = f"{dagster_dev}/locations/xmc/asset-groups/{group}"
        shot = tmp_path / f"{group}.png"
        _chromium(url, tmp_path, f"--screenshot={shot}")
        print(f"screenshot of {url}: {shot}")
        dom = _chromium(url, tmp_path, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        missing = [name for name in names if name not in dom.stdout]
        assert not missing, f"{group} graph page does not name {missing}; page text starts:\n{dom.stdout[:2000]}"

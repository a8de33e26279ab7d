"""`kedro viz run` shows every registered pipeline with its nodes, datasets and parameters.

The server runs on a free local port in a project copy; its HTTP API must list everything the
project's pipelines hold, and headless Chromium (Debian's `chromium`, which `.ci/run` installs)
must draw each pipeline's flowchart: one SVG node per task, dataset and parameter."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SERVER_START_S = 60  # kedro viz imports the project and builds its graph before it answers
CHROMIUM_TIMEOUT_S = 45
# Virtual time (Chromium fast-forwards timers while the page waits): room for the app to fetch the
# graph, lay it out and finish its transitions, without costing real seconds.
VIRTUAL_TIME_MS = 20000


def _free_port() -> int:
    """A free local port below both Linux's ephemeral range (32768 up) and 49152: kedro viz refuses
    ports above 49151, and a port the kernel hands out to clients could be taken meanwhile."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free local port in 20000-31999 for kedro viz")


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def _viz_name(dataset: str) -> str:
    """Kedro-Viz shows a transcoded dataset (`name@format`) as one node, `name`."""
    return dataset.split("@", 1)[0]


def _expected(pipeline) -> tuple[set[str], set[str], set[str], set[tuple[str, str]]]:
    """Task names, dataset names, parameter names and (source, target) edges of a Kedro pipeline."""
    tasks = {node.name for node in pipeline.nodes}
    datasets = {_viz_name(d) for d in pipeline.datasets()}
    params = {d for d in datasets if d.startswith("params:") or d == "parameters"}
    edges = set()
    for node in pipeline.nodes:
        edges |= {(_viz_name(d), node.name) for d in node.inputs}
        edges |= {(node.name, _viz_name(d)) for d in node.outputs}
    return tasks, datasets - params, params, edges


def _names(response: dict) -> dict[str, str]:
    """Node id -> name as Kedro knows it (a task's full name, a dataset's or parameter's name)."""
    return {n["id"]: n.get("full_name") or n["name"] for n in response["nodes"]}


class _Flowchart(HTMLParser):
    """The nodes and edges drawn inside the flowchart's SVG (`svg#pipeline-graph`)."""

    def __init__(self):
        super().__init__()
        self.svg_depth = 0  # > 0 while inside svg#pipeline-graph
        self.svg_attrs: dict = {}
        self.nodes: list[dict] = []
        self.edges: list[str] = []
        self.labels: list[str] = []
        self._in_label = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if tag == "svg" and attrs.get("id") == "pipeline-graph":
            self.svg_depth, self.svg_attrs = 1, attrs
            return
        if not self.svg_depth:
            return
        if tag == "svg":
            self.svg_depth += 1
        if tag == "g" and "pipeline-node" in classes:
            self.nodes.append(attrs)
        elif tag == "g" and "pipeline-edge" in classes:
            self.edges.append(attrs.get("data-id", ""))
        elif tag == "text" and "pipeline-node__text" in classes:
            self._in_label = True
            self.labels.append("")

    def handle_endtag(self, tag):
        if self.svg_depth and tag == "svg":
            self.svg_depth -= 1
        if tag == "text":
            self._in_label = False

    def handle_data(self, data):
        if self._in_label:
            self.labels[-1] += data


def _render(url: str, workdir: Path, screenshot: Path | None = None) -> tuple[str, str]:
    """The page's DOM after headless Chromium ran its scripts, and Chromium's stderr."""
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--mute-audio", "--hide-scrollbars",
        # hermetic: only the local server resolves (the page also asks for web fonts)
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={workdir / 'profile'}", "--window-size=1400,1600",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom",
    ]
    if screenshot is not None:
        cmd.append(f"--screenshot={screenshot}")
    cmd.append(url)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S,
                              env={**os.environ, "HOME": str(workdir)})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"headless Chromium did not finish rendering {url} in {CHROMIUM_TIMEOUT_S} s:\n"
                    f"{(exc.stderr or b'')[-3000:]!r}")
    # (no D-Bus in a container: Chromium complains about it on every start)
    stderr = "\n".join(line for line in done.stderr.splitlines() if "dbus" not in line)
    assert done.returncode == 0, f"chromium exited {done.returncode} on {url}:\n{stderr[-3000:]}"
    return done.stdout, stderr


def _server_log(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"


def _stop(server: subprocess.Popen) -> None:
    """Stop kedro viz and the server process it spawned (its whole process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _check_api(name: str, pipeline, response: dict) -> None:
    """One pipeline's API response lists all its tasks, datasets, parameters and dependencies."""
    assert response["selected_pipeline"] == name
    tasks, datasets, params, edges = _expected(pipeline)
    shown: dict[str, set[str]] = {"task": set(), "data": set(), "parameters": set()}
    for n in response["nodes"]:
        shown.setdefault(n["type"], set()).add(n.get("full_name") or n["name"])
        assert name in n["pipelines"], f"{n['name']} listed under {name} says {n['pipelines']}"
    for kind, wanted in (("task", tasks), ("data", datasets), ("parameters", params)):
        missing = sorted(wanted - shown[kind])
        assert not missing, f"{name}: {kind} nodes missing from kedro viz's API: {missing}"
    ids = _names(response)
    shown_edges = {(ids[e["source"]], ids[e["target"]]) for e in response["edges"]}
    assert edges <= shown_edges, f"{name}: edges missing from viz: {sorted(edges - shown_edges)}"
    grouped = {c["id"] for mp in response["modular_pipelines"].values() for c in mp["children"]}
    assert set(ids) <= grouped, f"{name}: nodes in no modular pipeline: {set(ids) - grouped}"


def _check_flowchart(name: str, pipeline, dom: str, stderr: str) -> None:
    """The rendered page drew one laid-out, labelled SVG node per task, dataset and parameter."""
    chart = _Flowchart()
    chart.feed(dom)
    context = f"\n--- chromium stderr ---\n{stderr[-2000:]}"
    assert chart.svg_attrs, f"{name}: no flowchart SVG (svg#pipeline-graph):\n{dom[:2000]}{context}"
    size = float(chart.svg_attrs.get("width", 0)), float(chart.svg_attrs.get("height", 0))
    assert min(size) > 0, f"{name}: the flowchart SVG is {size[0]} x {size[1]}"
    tasks, datasets, params, edges = _expected(pipeline)
    # A task of a Kedro namespace (the report's variants) is labelled with its bare name, so tasks
    # are matched by bare name and count (five variants: five "train_variant" nodes).
    drawn = Counter((n.get("data-node-type"), n.get("data-node-fullname")) for n in chart.nodes)
    expected = Counter([("task", t.rsplit(".", 1)[-1]) for t in tasks] + [("data", d) for d in datasets]
                       + [("parameters", p) for p in params])
    missing = expected - drawn
    assert not missing, (f"{name}: the flowchart drew {len(chart.nodes)} nodes; missing "
                         f"{sorted(missing.elements())}{context}")
    assert len(chart.labels) == len(chart.nodes) and all(label.strip() for label in chart.labels)
    spots = set()  # laid out: every node at its own finite position
    for n in chart.nodes:
        where = n.get("transform", "")
        match = re.fullmatch(r"translate\(([-\d.e]+),\s*([-\d.e]+)\)", where)
        assert match, f"{name}: node {n.get('data-node-fullname')} has no position: {where!r}"
        x, y = float(match[1]), float(match[2])
        assert math.isfinite(x) and math.isfinite(y), f"{name}: node at {where}"
        spots.add((round(x), round(y)))
    assert len(spots) == len(chart.nodes), f"{name}: {len(chart.nodes)} nodes on {len(spots)} spots"
    assert len(chart.edges) >= len(edges), f"{name}: drew {len(chart.edges)} of {len(edges)} edges"


def test_viz_shows_every_pipeline(project: Path, tmp_path: Path):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.fail(f"{CHROMIUM} is missing: this test renders Kedro-Viz in Debian's headless "
                    "Chromium (`apt-get install chromium`; .ci/run installs it)")

    from kedro.framework.project import pipelines
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project)
    registered = {name: pipelines[name] for name in pipelines}
    assert "__default__" in registered and len(registered) > 1

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "viz.log"
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "DVC_NO_ANALYTICS": "1"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "kedro", "viz", "run", "--host", "127.0.0.1",
             "--port", str(port), "--no-browser"],
            cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # 1. The HTTP API answers, and lists every registered pipeline.
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                pytest.fail(f"kedro viz run exited {server.returncode} before answering:\n"
                            f"{_server_log(log)}")
            if "already in use" in _server_log(log):  # kedro viz would move to the next port
                pytest.fail(f"port {port} was taken before kedro viz started:\n{_server_log(log)}")
            try:
                main = _get_json(f"{base}/api/main")
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                if time.monotonic() > deadline:
                    pytest.fail(f"kedro viz run did not answer on {base} in {SERVER_START_S} s:\n"
                                f"{_server_log(log)}")
                time.sleep(0.5)

        assert main["selected_pipeline"] == "__default__"
        listed = {p["id"] for p in main["pipelines"]}
        assert listed == set(registered), (f"viz lists pipelines {sorted(listed)}, "
                                           f"the project registers {sorted(registered)}")

        # 2. Per pipeline, the API lists every task, dataset and parameter, and every dependency.
        for name, pipeline in registered.items():
            response = _get_json(f"{base}/api/pipelines/{urllib.parse.quote(name)}")
            _check_api(name, pipeline, response)
            if name == "__default__":
                assert {n["id"] for n in main["nodes"]} == {n["id"] for n in response["nodes"]}

        # 3. Headless Chromium draws each pipeline's flowchart, parameters included (the app hides
        #    them by default; `types=` in the URL shows them, `pid=` picks the pipeline).
        for i, (name, pipeline) in enumerate(registered.items()):
            query = urllib.parse.urlencode({"pid": name, "types": "nodes,datasets,parameters",
                                            "expandAllPipelines": "true"})
            shot = tmp_path / "viz__default__.png" if name == "__default__" else None
            dom, stderr = _render(f"{base}/?{query}", tmp_path / f"chromium{i}", screenshot=shot)
            _check_flowchart(name, pipeline, dom, stderr)
            if shot is not None:
                assert shot.is_file() and shot.stat().st_size > 20_000, f"{shot}: missing or blank"
    finally:
        _stop(server)

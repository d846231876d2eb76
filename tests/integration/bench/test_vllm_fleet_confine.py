"""`start_replicas(confine=True)` keeps each replica's whole process tree on its own core.

Real processes on 127.0.0.1: a stand-in for vLLM's python (an executable script that takes
`start_replicas`' command line, answers `/health` and reports its CPU affinity and the one
of a child it starts, as vLLM's engine core and worker are children of its API server)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from inferoute.bench.vllm_fleet import start_replicas, stop_replicas

STAND_IN = textwrap.dedent("""\
    #!{python}
    import http.server, json, os, subprocess, sys
    port = int(sys.argv[sys.argv.index("--port") + 1])
    child = subprocess.run([sys.executable, "-c",
                            "import os; print(sorted(os.sched_getaffinity(0)))"],
                           capture_output=True, text=True).stdout.strip()
    body = json.dumps({{"self": sorted(os.sched_getaffinity(0)), "child": json.loads(child),
                       "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """)

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                reason="needs two cores to put two replicas on")


def stand_in(tmp_path: Path) -> Path:
    script = tmp_path / "python"
    script.write_text(STAND_IN.format(python=sys.executable))
    script.chmod(0o755)
    return script


def affinities(confine: bool, tmp_path: Path) -> list[dict]:
    replicas = start_replicas(stand_in(tmp_path), tmp_path, tmp_path, 2, timeout=60,
                              confine=confine)
    try:
        out = []
        for r in replicas:
            with urllib.request.urlopen(r.url + "/health", timeout=10) as resp:
                out.append(json.loads(resp.read()))
        return out
    finally:
        stop_replicas(replicas)


def test_confined_replicas_keep_their_whole_tree_on_their_own_core(tmp_path: Path) -> None:
    cores = os.cpu_count() or 1
    seen = affinities(True, tmp_path)
    for i, a in enumerate(seen):
        assert a["self"] == [i % cores] and a["child"] == [i % cores]
        assert a["bind"] == str(i % cores)


def test_unconfined_replicas_bind_only_the_compute_threads(tmp_path: Path) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    for i, a in enumerate(affinities(False, tmp_path)):
        assert a["self"] == allowed and a["child"] == allowed
        assert a["bind"] == str(i % (os.cpu_count() or 1))

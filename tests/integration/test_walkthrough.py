"""The README's walk-through, run as written against `make run` (python -m devstack on ports of its own), twice:
every answer is the one the README shows, and the second run answers exactly as the first (the writes carry
idempotency keys, so they replay)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.redis_server import free_port
from tests.support.scrape import scrape, total
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def walk_through() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Walk-through"):readme.index("## The API")]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None, "the walk-through has no shell block"
    return found.group(1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`make run` on free ports, its state in a temporary directory; the environment a second terminal has."""
    tmp_path = tmp_path_factory.mktemp("walk")
    ports = {name: str(free_port()) for name in ("PORT", "DEV_REDIS_PORT", "DEV_MONGO_PORT", "DEV_ISSUER_PORT",
                                                 "PROJECTOR_HEALTH_PORT", "DEV_HEALTH_PORT")}
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("REDIS_", "MONGODB_", "AUTH_", "LEDGER_", "DEV_", "PROJECTOR_", "GATEWAY_"))}
    env = {**inherited, **ports, "DEV_STATE_DIR": str(tmp_path / "state"), "WEB_CONCURRENCY": "2"}
    process = subprocess.Popen([sys.executable, "-m", "devstack"], cwd=ROOT, env=env, start_new_session=True,
                               stdout=(tmp_path / "devstack.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(f"http://127.0.0.1:{ports['PORT']}/healthz")
                   and _answers(f"http://127.0.0.1:{ports['PROJECTOR_HEALTH_PORT']}/healthz"), 90,
                   "make run to serve", interval=0.2)
        yield {**env, "REDIS_URL": f"redis://127.0.0.1:{ports['DEV_REDIS_PORT']}/0",
               "MONGODB_URI": f"mongodb://127.0.0.1:{ports['DEV_MONGO_PORT']}"}
    finally:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the API and projector, then the servers
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _run(script: str, env: dict[str, str]) -> list[str]:
    """The block as a shell runs it; each curl's answer on a line of its own, with its status."""
    preamble = 'curl() { command curl -w " %{http_code}\\n" "$@"; }\n'
    done = subprocess.run(["bash", "-c", preamble + script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.stdout.splitlines()


def _shown(script: str) -> list[str]:
    """The answers the README promises, in order: the comment lines that start with a JSON object."""
    return [line[2:].split("  ")[0] for line in script.splitlines() if line.startswith("# {")]


def test_the_walk_through_answers_as_the_readme_says_and_again_the_same(stack: dict[str, str]) -> None:
    script = walk_through().replace("localhost:8080", f"localhost:{stack['PORT']}")
    first = _run(script, stack)
    answers = [line for line in first if re.search(r" [0-9]{3}$", line)]
    promised = _shown(walk_through())
    assert len(answers) == len(promised) == 6, first
    for answer, shown in zip(answers, promised, strict=True):
        body = answer.rsplit(" ", 1)[0]
        json.loads(body)  # a whole JSON document, nothing else
        for part in re.findall(r'"[a-z_]+":(?:"[^"]*"|[0-9]+|\{[^}]*\})', shown):
            if "2026-" in part or "127.0.0.1" in part:
                continue  # times and the issuer's port differ from the README's example
            assert part in body, (part, body)
    assert [a.rsplit(" ", 1)[1] for a in answers] == ["201", "200", "200", "200", "404", "401"]
    assert '"balance": "0.00"' in "\n".join(first)  # projector show
    second = _run(script, stack)
    again = [line for line in second if re.search(r" [0-9]{3}$", line)]
    assert [_unrequested(a) for a in again] == [_unrequested(a) for a in answers]


def _unrequested(answer: str) -> str:
    """An answer without its request id (each request has its own)."""
    return re.sub(r'"request_id":"[^"]*"', '"request_id":"-"', answer)


def test_the_projector_commands_of_its_page_run_as_written(stack: dict[str, str]) -> None:
    """docs/projector.md's "Operating it" block, after the walk-through's writes: every command answers, and
    says what it found; none fails with a traceback."""
    page = (ROOT / "docs" / "projector.md").read_text()
    section = page[page.index("## Operating it"):]
    found = re.search(r"```sh\n(.*?)```", section, re.S)
    assert found is not None
    script = found.group(1).replace("localhost:8081", f"localhost:{stack['PROJECTOR_HEALTH_PORT']}")
    done = subprocess.run(["bash", "-c", "set -o pipefail\n" + script], cwd=ROOT, env=stack, capture_output=True,
                          text=True, timeout=300, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    out = done.stdout
    assert "all partitions ok" in out and "verified" in out and "0 parked" in out and "nothing parked" in out
    assert "rebuilt" in out and '"status": "ok"' in out.replace('"status":"ok"', '"status": "ok"')


def test_make_run_serves_the_metrics_of_the_api_and_the_projector(stack: dict[str, str]) -> None:
    api = f"http://127.0.0.1:{stack['PORT']}"
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(urllib.request.Request(f"{api}/nowhere", data=b"{}", method="POST"), timeout=10)
    metrics = f"http://127.0.0.1:{stack['DEV_HEALTH_PORT']}/metrics"
    wait_until(lambda: total(scrape(metrics), "ledger_http_requests_total", route="unmatched", status="404") >= 1,
               20, "the API's metrics to count the request")
    projector = f"http://127.0.0.1:{stack['PROJECTOR_HEALTH_PORT']}/metrics"
    wait_until(lambda: total(scrape(projector), "ledger_projector_owned") == 16, 30,
               "the projector's metrics to show every partition owned")


"""The README's "Try it in five minutes", run as written against a node started the way
``make run`` starts it.

The commands are read from the README's code blocks (so the two cannot drift) and run by
bash in a folder holding a copy of the shipped ``node.yaml`` in which only the ports are
changed (to free ones; ``portal.public_url`` follows the web port) and whose ``data_dir``
(``./data``, relative to the copy) is therefore the folder's own. The node is started with
the ``run`` recipe read from the Makefile. What the README tells the user to do between
the blocks (wait for ``notified``, open the link and press "Send my code", type the code,
"Download all") the test does over HTTP against the running node, and it checks that the
ZIP holds the study ``courier demo push`` said it sent. Loopback only; every wait bounded.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pydicom
import pytest

from tests.conftest import REPO, free_port, wait_for_echo, wait_for_port

SECTION = "## Try it in five minutes"
REFERENCE = re.compile(r"\bCR-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]\b")


def readme_blocks() -> list[list[str]]:
    """The ``sh`` code blocks of the README's quick start, as command lines (a trailing
    backslash joins the next line, as the shell does)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = []
    for body in re.findall(r"```sh\n(.*?)```", section, re.S):
        joined = body.replace("\\\n", " ")
        blocks.append([" ".join(line.split()) for line in joined.splitlines() if line.strip()])
    return blocks


def make_run_recipe() -> list[str]:
    """The Makefile's ``run`` recipe, with its variables at their defaults."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^run:.*\n\t(.+)$", makefile, re.M)
    assert recipe is not None, "the Makefile has no run target"
    line = recipe.group(1).replace("$(BIN)", str(REPO / ".venv" / "bin"))
    return shlex.split(line.replace("$(CONFIG)", "node.yaml"))


def shipped_config_with_ports(scp_port: int, web_port: int) -> str:
    """The shipped node.yaml with scp.port, portal.port and portal.public_url's port
    replaced (each found exactly once in its section); everything else as shipped."""
    text = (REPO / "node.yaml").read_text()
    out, section, seen = [], "", set()
    for line in text.splitlines(keepends=True):
        top = re.match(r"^([a-z_]+):", line)
        if top:
            section = top.group(1)
        key = re.match(r"^  (port|public_url): (.*)$", line)
        if key and section in ("scp", "portal"):
            name = f"{section}.{key.group(1)}"
            if name == "scp.port":
                line = f"  port: {scp_port}\n"
            elif name == "portal.port":
                line = f"  port: {web_port}\n"
            else:
                assert key.group(2) == "http://127.0.0.1:8080", key.group(2)
                line = f"  public_url: http://127.0.0.1:{web_port}\n"
            seen.add(name)
        out.append(line)
    assert seen == {"scp.port", "portal.port", "portal.public_url"}, seen
    return "".join(out)


class Browser:
    """What the user's browser does: follows nothing by itself, keeps the cookies.

    Cookies are kept by hand: the portal's are ``__Host-`` cookies marked Secure, which a
    browser keeps on http://127.0.0.1 (a secure context) but Python's cookie jar does not
    send over plain HTTP."""

    def __init__(self, base_url: str) -> None:
        self.client = httpx2.Client(base_url=base_url, follow_redirects=False, timeout=30)
        self.cookies: dict[str, str] = {}

    def request(self, method: str, url: str, **kw: object) -> httpx2.Response:
        header = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        rsp = self.client.request(method, url, headers={"Cookie": header}, **kw)  # type: ignore[arg-type]
        for line in rsp.headers.get_list("set-cookie"):
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "max-age=0" in line.lower() or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return rsp

    def close(self) -> None:
        self.client.close()

    def post_form(self, url: str, **fields: str) -> httpx2.Response:
        page = self.request("GET", url if url != "/access/code" else "/access")
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None, "no CSRF field on the page"
        return self.request("POST", url, data={"csrf": token.group(1), **fields})


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A folder like a fresh clone's for the commands: node.yaml (ports changed) and the
    project's .venv (so `. .venv/bin/activate` works). Yields it and the web port."""
    scp_port, web_port = free_port(), free_port()
    (tmp_path / "node.yaml").write_text(shipped_config_with_ports(scp_port, web_port))
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    yield tmp_path, web_port


def run(cwd: Path, prelude: list[str], command: str) -> str:
    """Run one README line with bash in ``cwd``, after the lines that set up the shell."""
    script = " && ".join([*prelude, command])
    env = {k: v for k, v in os.environ.items() if k not in ("COURIER_CONFIG", "VIRTUAL_ENV")}
    done = subprocess.run(
        ["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command!r} exited {done.returncode}: {done.stderr}"
    return done.stdout


def request_state(cwd: Path, prelude: list[str], reference: str) -> str:
    shown = run(cwd, prelude, f"courier request show {reference} --json")
    return str(json.loads(shown)["state"])


def test_readme_quick_start_works_as_written(folder: tuple[Path, int]) -> None:
    cwd, web_port = folder
    blocks = readme_blocks()
    assert [b[:1] for b in blocks] == [
        ["make run"], [". .venv/bin/activate"],
        ["courier request list"], ["cat data/outbox/*.txt"],
    ]  # fmt: skip
    log = cwd / "node.log"
    closing: list[Browser] = []
    with open(log, "wb") as out:
        node = subprocess.Popen(make_run_recipe(), cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        config = json.loads(
            subprocess.run(
                [str(REPO / ".venv/bin/courier"), "check-config", "--json"],
                cwd=cwd, capture_output=True, text=True, check=True,
            ).stdout
        )  # fmt: skip
        assert config["ok"]
        scp_port = int(re.search(r"(?m)^  port: (\d+)$", (cwd / "node.yaml").read_text())[1])  # type: ignore[index]
        wait_for_echo(scp_port, node)
        wait_for_port(web_port, node)

        # Block 2: activate, push the demo study, create its request.
        prelude = [line for line in blocks[1] if line.startswith((". ", "source "))]
        outputs = {line: run(cwd, prelude, line) for line in blocks[1] if line not in prelude}
        pushed = next(v for k, v in outputs.items() if k.startswith("courier demo push"))
        study_uid = re.search(r"(?m)^study (\S+)$", pushed)
        assert study_uid is not None, pushed
        assert "sent 5 of 5 instances" in pushed
        created = next(v for k, v in outputs.items() if k.startswith("courier request create"))
        found = REFERENCE.search(created)
        assert found is not None, created
        reference = found.group(0)

        # "About a minute and a half later ... the request is notified."
        deadline = time.monotonic() + 240
        state = request_state(cwd, prelude, reference)
        while state != "notified" and time.monotonic() < deadline:
            assert node.poll() is None, log.read_text()[-2000:]
            time.sleep(2)
            state = request_state(cwd, prelude, reference)
        assert state == "notified", log.read_text()[-2000:]

        # Block 3: the request list shows it; the link is found in the outbox.
        listed, link_out = (run(cwd, prelude, line) for line in blocks[2])
        assert reference in listed and "notified" in listed
        link = link_out.strip()
        assert link.startswith(f"http://127.0.0.1:{web_port}/d/"), link_out

        # Open the link, press "Send my code".
        browser = Browser(f"http://127.0.0.1:{web_port}")
        closing.append(browser)
        opened = browser.request("GET", link)
        assert opened.status_code == 303 and opened.headers["location"] == "/access"
        assert browser.request("GET", "/access").status_code == 200
        asked = browser.post_form("/access/code")
        assert asked.status_code == 303, asked.text

        # Block 4: the SMS file (the relay writes it within a few seconds).
        sms = ""
        for _ in range(100):  # bounded: 100 x 0.2 s
            if list((cwd / "data" / "outbox").glob("*.txt")):
                sms = run(cwd, prelude, blocks[3][0])
                break
            time.sleep(0.2)
        code = re.search(r"\b(\d{6})\b", sms.split("\n\n", 1)[-1])
        assert code is not None, "no code in the SMS file"

        # Type the code; "Download all".
        verified = browser.post_form("/access/verify", code=code.group(1))
        assert verified.status_code == 303 and verified.headers["location"] == "/files"
        files = browser.request("GET", "/files")
        href = re.search(r'id="download-all" href="([^"]+)"', files.text)
        assert href is not None, files.text[:2000]
        got = browser.request("GET", href.group(1))
        assert got.status_code == 200
    finally:
        for browser in closing:
            browser.close()
        node.terminate()
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(10)

    archive = zipfile.ZipFile(io.BytesIO(got.content))
    names = archive.namelist()
    assert "DICOMDIR" in names and any(n.startswith("README") for n in names), names
    studies: list[str] = []
    for name in names:
        if name == "DICOMDIR" or name.endswith(
            (".html", ".txt", ".json", ".png", ".jpg", ".js", ".css")
        ):
            continue
        ds = pydicom.dcmread(io.BytesIO(archive.read(name)), stop_before_pixels=True)
        studies.append(str(ds.StudyInstanceUID))
    assert studies == [study_uid.group(1)] * 5
    text = log.read_text()
    assert "DEMO^PATIENT" not in text and "patient@example.org" not in text

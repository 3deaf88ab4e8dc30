"""Browser tests: Debian's Chromium driven by Playwright against a real ``courier serve``.

- :func:`browser`: Chromium launched from ``/usr/bin/chromium`` (Playwright never downloads
  a browser here); :func:`new_context` makes fresh contexts, all closed after the test.
- :func:`site`: a node with its portal on a free port (``portal.public_url`` set to it),
  email through a real aiosmtpd server and SMS through the local Twilio-compatible
  endpoint, plus helpers to create a request, push a synthetic study with dcmtk's
  ``storescu`` and read the captured emails and SMS.

Every wait is bounded (Playwright timeouts, or a deadline on a polling loop). Chromium
treats ``http://127.0.0.1`` as a secure context, so the portal's ``__Host-`` cookies
(Secure) work over plain HTTP on loopback: :func:`assert_cookie` checks it at the first
step of each journey, so a Chromium that refuses them fails loudly, not mysteriously.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests import synthetic
from tests.conftest import COURIER, REPO, NodeProcess, have_dcmtk, need, wait_for_echo
from tests.peers import free_port
from tests.release.helpers import EMAIL, MOBILE, courier, create_by_cli
from tests.scu import storescu
from tests.smtp_server import SmtpServer
from tests.twilio_server import TwilioServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
AXE = Path(__file__).with_name("node_modules") / "axe-core" / "axe.min.js"
SCREENSHOTS = REPO / "docs" / "screenshots"
PHONE = {"width": 390, "height": 844}
SCREENSHOT_MAX_BYTES = 200_000

# Bounds on every wait, in milliseconds for Playwright and seconds for polling loops.
ACTION_MS = 15_000
NAVIGATION_MS = 30_000
MESSAGE_S = 60.0  # the outbox relay polls about every second; packaging takes a few
STATE_S = 90.0

# Synthetic people only: example.org addresses, mobile numbers no one is given.
PATIENT_EMAIL = EMAIL
PATIENT_MOBILE = MOBILE
CLINICIAN_EMAIL = "clinician@example.org"
CLINICIAN_MOBILE = "+447911123499"
CLINICIAN2_EMAIL = "gp@example.org"

RULES = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
  - name: everything-else
    action: hold
"""

_SIX_DIGITS = re.compile(r"(?<!\d)(\d{6})(?!\d)")


# -- the browser ------------------------------------------------------------------------


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Chromium for one test (per test, so Playwright's event loop never outlives it and
    cannot meet another test's ``asyncio.run``)."""
    need("chromium", shutil.which("chromium") is not None and os.access(CHROMIUM, os.X_OK))
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=NAVIGATION_MS
        )
        try:
            yield chromium
        finally:
            chromium.close()


ContextFactory = Callable[..., BrowserContext]


@pytest.fixture
def new_context(browser: Browser) -> Iterator[ContextFactory]:
    """Fresh contexts on a phone viewport (overridable); each is closed after the test."""
    made: list[BrowserContext] = []

    def make(**overrides: Any) -> BrowserContext:
        options: dict[str, Any] = {
            "viewport": PHONE,
            "device_scale_factor": 1,  # keeps the README's screenshots small
            "is_mobile": True,
            "has_touch": True,
            "locale": "en-GB",
            "accept_downloads": True,
        }
        options.update(overrides)
        ctx = browser.new_context(**options)
        ctx.set_default_timeout(ACTION_MS)
        ctx.set_default_navigation_timeout(NAVIGATION_MS)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        ctx.close()


def new_page(ctx: BrowserContext) -> Page:
    """A page of ``ctx`` (closed with its context)."""
    return ctx.new_page()


def assert_cookie(ctx: BrowserContext, name: str) -> None:
    """Fail with a clear message when Chromium did not keep the ``__Host-`` cookie."""
    names = [c["name"] for c in ctx.cookies()]
    assert name in names, (
        f"Chromium did not keep the Secure cookie {name!r} over http://127.0.0.1 "
        f"(cookies kept: {names}); the portal cannot work on loopback without it"
    )


def page_width(page: Page) -> int:
    """The document's width in CSS pixels (wider than the viewport: it scrolls sideways)."""
    return int(page.evaluate("document.documentElement.scrollWidth"))


def assert_fits_phone(page: Page) -> None:
    """Fail when the page is wider than the phone: it would scroll sideways (WCAG 1.4.10
    Reflow), and a mobile browser zooms out to the whole width instead."""
    width = page_width(page)
    assert width <= PHONE["width"], (
        f"{page.url} is {width} CSS px wide on a {PHONE['width']} px phone "
        f"(lang={page.locator('html').get_attribute('lang')}): it scrolls sideways"
    )


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """Where the journey's screenshots go: ``docs/screenshots`` for the README with
    ``COURIER_SCREENSHOTS=1``, else the test's own temporary directory (so an ordinary
    test run does not rewrite tracked images whose dates change every day)."""
    if os.environ.get("COURIER_SCREENSHOTS") == "1":
        return SCREENSHOTS
    return tmp_path / "screenshots"


def screenshot(page: Page, directory: Path, name: str) -> Path:
    """Save the visible phone screen as ``directory/name`` (after checking the page fits
    the phone, so no half-empty picture reaches the README); check its size."""
    assert_fits_phone(page)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    page.screenshot(path=str(path), full_page=False, animations="disabled", caret="hide")
    size = path.stat().st_size
    assert size < SCREENSHOT_MAX_BYTES, f"{name} is {size} bytes; keep it under 200 KB"
    return path


def html_language(page: Page) -> tuple[str | None, str | None]:
    """The page's ``<html lang dir>``."""
    root = page.locator("html")
    return root.get_attribute("lang"), root.get_attribute("dir")


# -- the node ---------------------------------------------------------------------------


@dataclass
class Site:
    """A running node with its portal, and the servers that capture what it sends."""

    node: NodeProcess
    smtp: SmtpServer
    sms: TwilioServer
    base_url: str
    tmp: Path

    def cli(self, *argv: str, check: bool = True) -> Any:
        """Run ``courier ARGV --config ... --json``; the decoded JSON (None if no output)."""
        return courier(self.node, *argv, check=check, timeout=120)

    def create_request(self, accession: str, *extra: str) -> str:
        """A request for the synthetic patient, by accession; returns its reference."""
        return create_by_cli(self.node, "--accession", accession, *extra)

    def push(self, accession: str, n_slices: int = 4) -> None:
        """Send a small synthetic CT study with dcmtk's storescu."""
        ct = synthetic.make_ct_series(
            self.tmp / f"ct-{accession}", n_slices=n_slices, rows=96, cols=96, accession=accession
        )
        out = storescu(self.node.port, ct, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]

    def state(self, ref: str) -> str:
        return str(self.cli("request", "show", ref)["state"])

    def wait_state(self, ref: str, want: str, timeout: float = STATE_S) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.state(ref)
            if state == want:
                return
            time.sleep(0.5)
        raise AssertionError(f"request {ref} is {state!r}, not {want!r}, after {timeout:.0f} s")

    def mails_to(self, address: str) -> list[EmailMessage]:
        return [r.message() for r in self.smtp.received if address in r.rcpt_tos]

    def wait_mail(
        self,
        address: str,
        match: Callable[[EmailMessage], bool] = lambda m: True,
        *,
        since: int = 0,
        timeout: float = MESSAGE_S,
    ) -> EmailMessage:
        """The first email to ``address``, after the first ``since`` ones, that ``match``
        accepts (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.mails_to(address)[since:]:
                if match(msg):
                    return msg
            time.sleep(0.25)
        subjects = [str(m["Subject"]) for m in self.mails_to(address)]
        raise AssertionError(f"no matching email to {address} in {timeout:.0f} s: {subjects}")

    def link_in(self, msg: EmailMessage) -> str:
        """The ``<public_url>/d/<token>`` link of an email's text part."""
        found = re.search(
            re.escape(self.base_url) + r"/d/[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])", text_of(msg)
        )
        assert found, f"no {self.base_url}/d/<43-char token> link in {msg['Subject']!r}"
        return found.group(0)

    def sms_to(self, number: str) -> list[str]:
        return [str(m["body"]) for m in self.sms.messages if m["to"] == number]

    def wait_code(self, number: str, seen: int, timeout: float = MESSAGE_S) -> str:
        """The 6-digit code of the SMS to ``number`` after the first ``seen`` ones."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            bodies = self.sms_to(number)
            if len(bodies) > seen:
                found = _SIX_DIGITS.search(bodies[seen])
                assert found, "the code SMS holds no 6-digit code"
                return found.group(1)
            time.sleep(0.25)
        raise AssertionError(f"no code SMS to the test number in {timeout:.0f} s")


def text_of(msg: EmailMessage) -> str:
    part = msg.get_body(("plain",))
    assert part is not None, f"{msg['Subject']!r} has no text part"
    return str(part.get_content())


def _wait_http(url: str, proc: Any, timeout: float = 30.0) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited with {proc.returncode} before its portal answered")
        try:
            with opener.open(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: that is all we wait for
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the portal did not answer {url} in {timeout:.0f} s")


def _config(tmp: Path, scp_port: int, web_port: int, smtp: SmtpServer, sms: TwilioServer) -> str:
    # The whole node.yaml is written here (not through tests.conftest.write_config): the
    # portal section needs public_url, which must name the same free port.
    return f"""\
node:
  data_dir: {tmp / "node-data"}
scp:
  ae_title: COURIER
  host: 127.0.0.1
  port: {scp_port}
  stable_after_s: 1
  stability_check_s: 0.3
portal:
  host: 127.0.0.1
  port: {web_port}
  public_url: http://127.0.0.1:{web_port}
  staff_admins: [radiographer.one]  # test_staff_journey's user may manage API keys
rules_file: {tmp / "rules.yaml"}
delivery:
  urgent_check_s: 0.5
  window: '01:00-01:01'
  timezone: Pacific/Kiritimati
  contact: 'Imaging records, 020 7946 0000'
email:
  backend: smtp
  host: 127.0.0.1
  port: {smtp.port}
  security: none
  from_address: imaging@hospital.example
  from_name: St Elsewhere
sms:
  backend: twilio
  account_sid: {sms.sid}
  auth_token_env: COURIER_TWILIO
  from_number: '+15005550006'
  api_base: {sms.base_url}
  sender_name: St Elsewhere
"""


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    """A node (SQLite, embedded defaults otherwise) with its portal, SMTP and SMS peers."""
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    with SmtpServer(security="none") as smtp, TwilioServer() as sms:
        scp_port, web_port = free_port(), free_port()
        while web_port == scp_port:
            web_port = free_port()
        config = tmp_path / "node.yaml"
        config.write_text(_config(tmp_path, scp_port, web_port, smtp, sms))
        env = dict(os.environ, COURIER_TWILIO=sms.token)
        log = tmp_path / "node.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [str(COURIER), "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        node = NodeProcess(proc, config, tmp_path / "node-data", scp_port, log, env)
        try:
            wait_for_echo(scp_port, proc)
            base = f"http://127.0.0.1:{web_port}"
            _wait_http(base + "/static/courier.css", proc)
            yield Site(node, smtp, sms, base, tmp_path)
        finally:
            node.stop()


def patient_link(site: Site, accession: str) -> tuple[str, str]:
    """Create an urgent request, push its study, wait for the link email: (ref, link)."""
    ref = site.create_request(accession, "--urgency", "now")
    site.push(accession)
    site.wait_state(ref, "notified")
    mail = site.wait_mail(PATIENT_EMAIL, lambda m: "/d/" in text_of(m))
    return ref, site.link_in(mail)

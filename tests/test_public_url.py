"""``portal.public_url`` on plain HTTP off loopback is an error (the ``__Host-`` cookies
need HTTPS: every link would fail) at start, in ``courier check-config`` and in
``courier doctor``; loopback http stays allowed. Nothing is resolved or contacted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from node.cli import main
from portal.publicurl import plain_http_problem
from portal.settings import PortalSettings
from tests.conftest import COURIER, free_port, write_config


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://127.1.2.3", True),  # all of 127.0.0.0/8
        ("http://localhost:8080", True),
        ("http://LOCALHOST", True),
        ("http://courier.localhost", True),  # RFC 6761: always loopback
        ("http://[::1]:8080", True),
        ("https://courier.example.org", True),
        ("https://10.1.2.3:8443/courier", True),
        ("http://10.1.2.3", False),  # just a string: nothing is contacted
        ("http://10.1.2.3:8080/courier", False),
        ("http://courier.example.org", False),
        ("http://0.0.0.0:8080", False),  # not an address a browser can be sent to
        ("http://[2001:db8::1]", False),
        ("http://localhost.example.org", False),  # a name, whatever it resolves to
    ],
)
def test_the_validator(url: str, allowed: bool) -> None:
    assert (plain_http_problem(url) is None) == allowed
    if allowed:
        assert PortalSettings(public_url=url).public_url == url
        return
    with pytest.raises(ValidationError) as caught:
        PortalSettings(public_url=url)
    message = str(caught.value)
    # The error names the fix: TLS files, or a reverse proxy with an https URL.
    for words in ("https://", "portal.tls_cert_file", "portal.trusted_proxies"):
        assert words in message


def _config(tmp: Path, url: str) -> Path:
    path = tmp / "node.yaml"
    write_config(path, tmp / "data", free_port(), extra_portal=f"public_url: {url}")
    return path


@pytest.mark.parametrize(
    ("url", "code"),
    [("http://courier.example.org", 2), ("http://10.1.2.3:8080", 2), ("http://[::1]:8080", 0)],
)
def test_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str, code: int
) -> None:
    path = _config(tmp_path, url)
    assert main(["check-config", "--config", str(path)]) == code
    err = capsys.readouterr().err
    if code:
        # file:line:col and the dotted key, then the fix
        assert f"{path}:" in err and "portal.public_url" in err
        assert "portal.trusted_proxies" in err and "portal.tls_cert_file" in err


def test_doctor_and_serve_refuse_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, "http://courier.example.org")
    assert main(["doctor", "--timeout", "1", "--config", str(path)]) == 2
    assert "portal.public_url" in capsys.readouterr().err
    # `courier serve` stops before anything listens or is made.
    done = subprocess.run(
        [str(COURIER), "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "portal.public_url" in done.stderr and "portal.trusted_proxies" in done.stderr
    assert not (tmp_path / "data").exists()

"""The REST API served by `courier serve`, with a key made by `courier apikey create`."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import COURIER, free_port, start_node, write_config


def _call(port: int, path: str, key: str | None, body: Any = None) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
        },
        method="GET" if body is None else "POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=10) as rsp:
            return rsp.status, json.loads(rsp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_apikey_create_then_the_served_api_accepts_it(tmp_path: Path) -> None:
    web_port = free_port()
    config = tmp_path / "node.yaml"
    write_config(config, tmp_path / "node-data", free_port(), web_port=web_port)
    made = subprocess.run(
        [str(COURIER), "apikey", "create", "--label", "RIS", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    key = json.loads(made.stdout)["key"]
    digests = (tmp_path / "node-data" / "api_keys.txt").read_text()
    assert key not in digests and json.loads(made.stdout)["digest"] in digests
    # start_node rewrites the config with a fresh port pair; keep ours.
    node = start_node(tmp_path, web_port=web_port)
    try:
        status, _ = _call(web_port, "/api/v1/studies", None)
        assert status == 401
        status, _ = _call(web_port, "/api/v1/studies", "ck_wrong")
        assert status == 403
        status, studies = _call(web_port, "/api/v1/studies", key)
        assert (status, studies) == (200, [])
        draft = {
            "patient_id": "SYN1",
            "patient_name": "Synthetic^Patient",
            "patient_birth_date": "19700131",
            "recipient_email": "p@example.org",
            "second_channel": "sms:+447911123456",
            "requested_by": "ris",
            "selection": [{"kind": "accession", "value": "ACC1"}],
        }
        status, created = _call(web_port, "/api/v1/requests", key, draft)
        assert status == 201 and created["state"] == "pending"
        status, listed = _call(web_port, "/api/v1/requests", key)
        assert [r["reference"] for r in listed] == [created["reference"]]
        log = node.log.read_text()
        assert key not in log and "Synthetic" not in log
    finally:
        node.stop()


def test_https_with_a_certificate_sends_hsts_and_plain_http_does_not(tmp_path: Path) -> None:
    """`portal.tls_cert_file`/`tls_key_file`: uvicorn serves HTTPS itself; every
    response then carries HSTS (never over plain HTTP, where it would be ignored)."""
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    data = tmp_path / "node-data"
    data.mkdir()
    cert.private_key_pem.write_to_path(str(data / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(data / "cert.pem"))
    node = start_node(
        tmp_path,
        extra="",
        extra_portal="tls_cert_file: cert.pem\ntls_key_file: key.pem\n",
    )
    try:
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        url = f"https://127.0.0.1:{node.web_port}/static/courier.css"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as rsp:
            headers = {k.lower(): v for k, v in rsp.headers.items()}
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert headers["x-content-type-options"] == "nosniff"
    finally:
        node.stop()

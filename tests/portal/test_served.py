"""The REST API served by `courier serve`, with keys made and revoked by `courier apikey`."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import COURIER, free_port, start_node


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


def _courier(config: Path, *args: str) -> Any:
    done = subprocess.run(
        [str(COURIER), *args, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return json.loads(done.stdout)


def test_a_key_made_or_revoked_by_the_cli_takes_effect_at_once_in_a_running_node(
    tmp_path: Path,
) -> None:
    """Keys live in the database (portal.apikeys): no restart between create, use and
    revoke; the key itself is never stored, listed or logged."""
    web_port = free_port()
    node = start_node(tmp_path, web_port=web_port)
    config = tmp_path / "node.yaml"
    try:
        status, _ = _call(web_port, "/api/v1/studies", None)
        assert status == 401
        status, _ = _call(web_port, "/api/v1/studies", "ck_wrong")
        assert status == 403
        made = _courier(config, "apikey", "create", "--label", "RIS")
        key = made["key"]
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
        listed = _courier(config, "apikey", "list")
        assert [(k["id"], k["label"]) for k in listed] == [(made["id"], "RIS")]
        assert listed[0]["last_used_at"] is not None and listed[0]["revoked_at"] is None
        assert key not in json.dumps(listed)
        revoked = _courier(config, "apikey", "revoke", made["digest_prefix"][:8])
        assert revoked["revoked_at"] is not None
        for path in ("/api/v1/studies", "/api/v1/requests"):
            status, body = _call(web_port, path, key)
            assert status == 403 and "unknown API key" in body["detail"]
        log = node.log.read_text()
        assert key not in log and "Synthetic" not in log
    finally:
        node.stop()
    audit = _courier(config, "audit", "--type", "api-key")
    assert sorted(e["detail"].split(" ", 1)[0] for e in audit) == ["created", "revoked"]
    assert all(e["actor"].startswith("cli:") for e in audit)


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

"""The hospital's display name (``node.hospital_name``) names the hospital in the emails
and on the portal's pages; before it existed ``email.from_name`` did, so that is its
fallback, then ``node.name``. ``courier doctor`` warns while either is the shipped
"courier" (tests/test_doctor.py::test_the_display_names)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from delivery import messages
from node.app import open_store
from node.config import load_config
from node.delivery import DeliveryService

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("yaml", "hospital"),
    [
        ("", "courier"),  # nothing set: node.name
        ("email:\n  from_name: St Example Imaging\n", "St Example Imaging"),
        ("node:\n  hospital_name: St Example\n", "St Example"),
        ("node:\n  hospital_name: St Example\nemail:\n  from_name: Radiology\n", "St Example"),
        ("node:\n  hospital_name: '  St   Example '\n", "St Example"),  # spaces tidied
    ],
)
def test_the_hospital_name_in_the_link_email(tmp_path: Path, yaml: str, hospital: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml)
    cfg = load_config(path)
    assert cfg.hospital_name == hospital
    msg = messages.link_email(
        to="p.example@patients.example",
        link_url="https://courier.example/d/Zx9",
        expires=date(2030, 1, 31),
        hospital=cfg.hospital_name,
        language="en",
        message_id="m@courier.test",
    )
    assert msg.subject == f"Your imaging from {hospital} is ready"


def test_the_node_hands_it_to_the_emails_and_the_pages(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\n  hospital_name: St Example\n")
    cfg = load_config(path)
    engine, sessions, content = open_store(cfg)
    try:
        service = DeliveryService(cfg, sessions, content)
        assert service.portal_context().hospital == "St Example"  # page titles
        assert service.composer._b.hospital == "St Example"  # every email
    finally:
        engine.dispose()


def _first_key(text: str, section: str) -> str:
    body = text.split(f"\n{section}:\n", 1)[1]
    return next(line for line in body.splitlines() if not line.lstrip().startswith("#"))


def test_the_shipped_node_yaml_puts_the_names_first() -> None:
    text = (REPO / "node.yaml").read_text()
    assert _first_key(text, "node") == "  hospital_name: courier"
    assert _first_key(text, "email") == "  from_name: courier"
    cfg = load_config(REPO / "node.yaml")
    assert cfg.hospital_name == "courier" and cfg.email.from_name == "courier"


def test_the_node_hands_store_retention_days_to_the_portal(tmp_path: Path) -> None:
    """ "Ask for more time" must count the received studies' purge (store.retention_days)."""
    path = tmp_path / "node.yaml"
    path.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nstore:\n  retention_days: 3\n")
    cfg = load_config(path)
    engine, sessions, content = open_store(cfg)
    try:
        assert DeliveryService(cfg, sessions, content).portal_context().retention_days == 3
    finally:
        engine.dispose()

"""DeliverySettings: defaults, normalization, and a table of refused values.

Each refusal must name the field and say what is expected; through ``load_config`` the
message also carries the file, line and dotted key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from delivery.settings import DeliverySettings
from delivery.window import DeliveryWindow
from node.config import ConfigError, load_config

# The worked example of the README's "Delivery schedule" section.
README_EXAMPLE = """\
delivery:
  window: "22:30-05:00"
  timezone: America/New_York
  overdue_after_h: 48
  link_days: 14
  max_package_mb: 4000
  staff_email: imaging-desk@hospital.example.org
  urgent_check_s: 20
  sweep_interval_s: 60
  misfire_grace_h: 6
  retry_base_s: 30
  retry_cap_s: 3600
  max_attempts: 12
  code_ttl_min: 10
  code_max_tries: 5
  code_sends_per_hour: 3
  package_dir: /srv/courier/packages
"""


def test_defaults() -> None:
    s = DeliverySettings()
    assert (s.window, s.timezone, s.link_days, s.max_package_mb) == (
        "01:00-05:00",
        "Europe/London",
        30,
        2000,
    )
    assert (s.urgent_check_s, s.sweep_interval_s, s.misfire_grace_h) == (20, 60, 6)
    assert (s.retry_base_s, s.retry_cap_s, s.max_attempts) == (30, 3600, 12)
    assert (s.code_ttl_min, s.code_max_tries, s.code_sends_per_hour) == (10, 5, 5)
    assert s.staff_email is None and s.package_dir is None and s.overdue_after_h == 72
    assert s.delivery_window() == DeliveryWindow.parse("01:00-05:00", "Europe/London")


def test_every_field_is_documented() -> None:
    for name, field in DeliverySettings.model_fields.items():
        assert field.description and "Default" in field.description, name


def test_normalization() -> None:
    s = DeliverySettings(
        window=" 22:00-02:00 ", timezone=" America/New_York ", staff_email=" Desk@Example.ORG "
    )
    assert (s.window, s.timezone, s.staff_email) == (
        "22:00-02:00",
        "America/New_York",
        "Desk@example.org",
    )
    assert DeliverySettings(staff_email="").staff_email is None


def test_packages_path() -> None:
    data = Path("/var/courier")
    assert DeliverySettings().packages_path(data) == data / "packages"
    assert DeliverySettings(package_dir=Path("zips")).packages_path(data) == data / "zips"
    assert DeliverySettings(package_dir=Path("/srv/p")).packages_path(data) == Path("/srv/p")


BAD: list[tuple[str, Any, str]] = [
    ("window", "25:00-01:00", "HH:MM-HH:MM"),
    ("window", "01:00-01:00", "starts and ends at the same time"),
    ("window", "1-5", "HH:MM-HH:MM"),
    ("window", "01:00-05:00 Europe/London", "HH:MM-HH:MM"),
    ("timezone", "Mars/Olympus", "unknown time zone"),
    ("timezone", "BST", "unknown time zone"),
    ("staff_email", "imaging desk", "not a valid e-mail address"),
    ("staff_email", "desk@localhost", "not a valid e-mail address"),
    ("overdue_after_h", -1, "greater than 0"),
    ("link_days", 0, "greater than or equal to 1"),
    ("link_days", -30, "greater than or equal to 1"),
    ("max_package_mb", -1, "greater than or equal to 0"),
    ("urgent_check_s", -20, "greater than 0"),
    ("urgent_check_s", 0, "greater than 0"),
    ("sweep_interval_s", -1, "greater than 0"),
    ("misfire_grace_h", -6, "greater than 0"),
    ("misfire_grace_h", 48, "less than or equal to 24"),
    ("retry_base_s", -30, "greater than 0"),
    ("retry_cap_s", -1, "greater than 0"),
    ("retry_cap_s", 10, "retry_cap_s (10) is below retry_base_s (30)"),
    ("max_attempts", 0, "greater than or equal to 1"),
    ("code_ttl_min", -10, "greater than or equal to 1"),
    ("code_max_tries", 0, "greater than or equal to 1"),
    ("code_sends_per_hour", -3, "greater than or equal to 1"),
    ("code_daily_failures_lock", 4, "greater than or equal to 5"),
    ("code_daily_failures_lock", 1001, "less than or equal to 1000"),
    ("purge_grace_days", -1, "greater than or equal to 0"),
    ("purge_grace_days", 366, "less than or equal to 365"),
    ("package_dir", ".", "give a folder for packages"),
    ("windw", "01:00-05:00", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_refused(field: str, value: Any, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        DeliverySettings.model_validate({field: value})
    text = str(info.value)
    assert field in text and message in text


def test_frozen() -> None:
    s = DeliverySettings()
    with pytest.raises(ValidationError, match="frozen"):
        setattr(s, "link_days", 3)  # noqa: B010 (assignment must fail at run time)


def test_readme_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(README_EXAMPLE, encoding="utf-8")
    d = load_config(path).delivery
    w = d.delivery_window()
    assert w.wraps_midnight and w.zone.key == "America/New_York"
    assert d.packages_path(tmp_path) == Path("/srv/courier/packages")


def test_errors_in_node_yaml_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(
        "delivery:\n  window: '25:00-01:00'\n  timezone: Mars/Olympus\n  link_days: -1\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = info.value.problems
    assert any(f"{path}:2:" in p and "delivery.window" in p and "HH:MM" in p for p in lines)
    assert any(f"{path}:3:" in p and "delivery.timezone" in p for p in lines)
    assert any(f"{path}:4:" in p and "delivery.link_days" in p for p in lines)

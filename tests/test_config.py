"""node.yaml: the shipped file is valid; every bad input names file, line, key, value."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.cli import main
from node.config import ConfigError, load_config
from store.db import database_url
from tests.conftest import REPO


def test_shipped_node_yaml_is_valid_and_uses_embedded_defaults() -> None:
    cfg = load_config(REPO / "node.yaml")
    assert cfg.scp.ae_title == "COURIER"
    assert cfg.scp.stable_after_s == 60
    assert cfg.data_dir == (REPO / "data").resolve()
    assert database_url(cfg.store, cfg.data_dir, REPO).startswith("sqlite:///")


BAD = [
    # (yaml, expected line, fragments the message must contain)
    ("scp:\n  port: 99999\n", 2, ["scp.port", "99999"]),
    ("scp:\n  prot: 104\n", 2, ["scp.prot", "unknown key"]),
    ("nodes:\n  name: x\n", 1, ["nodes", "unknown key"]),
    ("scp:\n  ae_title: THIS_TITLE_IS_TOO_LONG\n", 2, ["scp.ae_title", "16"]),
    ("scp:\n  ae_title: 'A\\\\B'\n", 2, ["scp.ae_title", "backslash"]),
    (
        "scp:\n  allowed_calling_aes:\n    - PACS\n    - {ae_title: RIS, host: not-an-ip}\n",
        4,
        ["allowed_calling_aes.1.host", "not an IP address"],
    ),
    (
        "scp:\n  allowed_calling_aes:\n    - {ae_title: RIS, hots: 1.2.3.4}\n",
        3,
        ["allowed_calling_aes.0.hots", "unknown key"],
    ),
    ("scp:\n  stable_after_s: -1\n", 2, ["scp.stable_after_s", "-1"]),
    ("scp:\n  max_pdu_size: 0\n", 2, ["scp.max_pdu_size"]),
    ("scp:\n  workers: many\n", 2, ["scp.workers", "many"]),
    ("scp:\n  host: my-pacs.example.org\n", 2, ["scp.host", "IP address"]),
    (
        "store:\n  database_url: postgresql://u:secret@db/x\n",
        2,
        ["database_url", "password", "database_url_env"],
    ),
    ("store:\n  database_url: sqlite:///x.db\n  database_url_env: X\n", 1, ["only one"]),
    ("node:\n  name: a\n  name: b\n", 3, ["duplicate key 'name'", "first at line 2"]),
    ("node:\n  data_dir: !!python/object:os.system x\n", 2, ["not allowed"]),
    ("a: &x [1]\nb: *x\n", 1, ["anchors"]),
    ("scp: [1, 2\n", 2, []),
    ("- just\n- a list\n", 1, ["mapping"]),
    ("node:\n  data_dir: '.'\n", 2, ["node.data_dir"]),
]


@pytest.mark.parametrize(("text", "line", "fragments"), BAD)
def test_bad_config_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, fragments: list[str]
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert f"{path}:{line}:" in message
    for fragment in fragments:
        assert fragment in message
    assert "secret" not in message  # a password in a URL is never echoed back


def test_non_utf8_and_oversized_files_are_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"node:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml:2:1: not UTF-8"):
        load_config(latin)
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="limit"):
        load_config(big)


def test_missing_file_says_how_to_point_at_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="COURIER_CONFIG"):
        load_config(tmp_path / "absent.yaml")


def test_relative_data_dir_resolves_against_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "node.yaml"
    path.write_text("node:\n  data_dir: ../var/courier\n")
    assert load_config(path).data_dir == (tmp_path / "var" / "courier").resolve()


def test_database_url_from_env_and_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("store:\n  database_url_env: MY_DB\n")
    cfg = load_config(path)
    assert database_url(cfg.store, cfg.data_dir, tmp_path, {"MY_DB": "sqlite:///e.db"}) == (
        "sqlite:///e.db"
    )
    with pytest.raises(ValueError, match="MY_DB is not set"):
        database_url(cfg.store, cfg.data_dir, tmp_path, {})
    (tmp_path / "url.txt").write_text("sqlite:///f.db\n")
    path.write_text("store:\n  database_url_file: url.txt\n")
    cfg = load_config(path)
    assert database_url(cfg.store, cfg.data_dir, tmp_path) == "sqlite:///f.db"


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("scp:\n  port: 11112\n")
    assert main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("scp:\n  port: nope\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "scp.port" in err and "'nope'" in err


def test_config_from_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "env.yaml"
    path.write_text("node:\n  name: from-env\n")
    monkeypatch.setenv("COURIER_CONFIG", str(path))
    assert main(["check-config", "--json"]) == 0
    assert str(path) in capsys.readouterr().out

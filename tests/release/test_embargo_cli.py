"""`courier rules test` explains the release policy a released study would get."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from node.cli import main
from tests import synthetic

RULES = """
rules:
  - name: ct-embargo
    when: {Modality: CT}
    action: release
    join: {accession: AccessionNumber}
    release: {after: 72h, until: report_final, max_wait: 7d, then: release_images}
  - name: by-accession
    action: release
    join: {accession: AccessionNumber}
"""
SITE = """
delivery:
  timezone: Europe/London
  release: {after: 2d, from: study_date}
"""


@pytest.fixture
def study(tmp_path: Path) -> Path:
    folder = tmp_path / "ct"
    for path in synthetic.make_ct_series(folder, n_slices=1, rows=32, cols=32):
        ds = pydicom.dcmread(path)
        ds.StudyDate = "20260328"
        ds.save_as(path)
    return folder


def _run(tmp_path: Path, study: Path, *extra: str) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "node.yaml").write_text(SITE)
    argv = ["rules", "test", "--config", str(tmp_path / "node.yaml")]
    argv += ["--rules", str(tmp_path / "rules.yaml"), "--arrived", "2026-03-27T12:00:00Z"]
    assert main([*argv, *extra, str(study)]) == 0


def test_rules_test_explains_the_rules_own_policy(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(tmp_path, study)
    text = capsys.readouterr().out
    assert (
        "release policy (rule ct-embargo): after 72h from arrival, until report_final "
        "(at most 7d, then release_images)"
    ) in text
    assert "if it arrived 2026-03-27 12:00 GMT: waiting for the final report" in text
    assert "2026-04-03 12:00 BST" in text and "embargoed until 2026-03-30 13:00 BST" in text

    _run(tmp_path, study, "--json")
    [found] = json.loads(capsys.readouterr().out)["studies"]
    policy = found["release_policy"]
    assert (policy["source"], policy["hold"]) == ("rule ct-embargo", "report")
    assert policy["until"] == "2026-04-03T11:00:00+00:00"


def test_rules_test_explains_the_site_default_across_a_dst_change(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in study.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"  # not the CT rule: by-accession, which has no policy
        ds.save_as(path)
    _run(tmp_path, study, "--json")
    [found] = json.loads(capsys.readouterr().out)["studies"]
    policy = found["release_policy"]
    assert policy["source"] == "node.yaml delivery.release"
    # Two calendar days after local midnight of 2026-03-28: 00:00 BST on the 30th.
    assert (policy["hold"], policy["until"]) == ("embargo", "2026-03-29T23:00:00+00:00")
    assert policy["verdict"].startswith("embargoed until 2026-03-30 00:00 BST")


def test_rules_test_without_a_node_yaml(
    tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    rules = tmp_path / "rules.yaml"
    argv = ["rules", "test", "--config", str(tmp_path / "missing.yaml"), "--rules", str(rules)]
    assert main([*argv, "--json", str(study)]) == 0
    [found] = json.loads(capsys.readouterr().out)["studies"]
    assert found["release_policy"]["source"] == "rule ct-embargo"

"""`courier export-iso`: a request's stored studies as an ISO 9660 image, read back by
pycdlib and genisoimage's isoinfo, its DICOMDIR by pydicom, dcmtk and dciodvfy; every
instance byte-identical to the store. Synthetic studies only, stored by the real ingest."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pycdlib
import pydicom
import pytest
from sqlalchemy import select, update

from delivery.disc import DiscExistsError, volume_label, write_disc_image
from delivery.packaging.errors import UnreadableInstanceError
from delivery.packaging.items import package_items
from delivery.packaging.package import PackageInfo
from delivery.packaging.readme import Medium, render_readmes
from node.cli import main
from release.reference import new_reference
from release.requests import RequestBook
from scp.ingest import Ingest, Peer, Status
from store.catalog import Catalog
from store.content import ContentStore
from store.models import Instance, RequestState, RequestStudy, Study, utcnow
from tests import synthetic
from tests.conftest import Database
from tests.dcmtk import have_dcmtk
from tests.delivery.test_package import read_fileset
from tests.peers import require_peer
from tests.release.helpers import draft
from tests.release.test_cli_requests import config  # noqa: F401  (fixture: node.yaml on db)

REPO = Path(__file__).resolve().parents[2]
PEER = Peer("PACS", "COURIER", "127.0.0.1")
SQLITE = pytest.mark.parametrize("db", ["sqlite"], indirect=True)
INFO = PackageInfo("CR-ABCD-EFGH-K", "en", "Imaging desk", datetime(2026, 3, 2, tzinfo=UTC))


@dataclass
class Stored:
    """A request with synthetic studies stored through the real ingest."""

    reference: str
    request_id: int
    content: ContentStore
    db: Database

    def files(self) -> dict[str, Path]:
        """SOP Instance UID -> stored file."""
        with self.db.sessions() as s:
            rows = s.execute(select(Instance.sop_instance_uid, Instance.path)).all()
        return {uid: self.content.path(path) for uid, path in rows}

    def timeline(self) -> list[tuple[str, str]]:
        return [(e.actor, e.reason) for e in RequestBook(self.db.sessions).timeline(self.reference)]


def store(db: Database, content: ContentStore, paths: list[Path]) -> None:
    """Store ``paths`` as the SCP would (spool → fsync → rename → index row)."""
    ingest = Ingest(content, Catalog(db.sessions))
    for path in paths:
        spooled = content.spool / path.name
        shutil.copyfile(path, spooled)
        header = pydicom.dcmread(path, stop_before_pixels=True)
        status = ingest.store(None, spooled, header.SOPClassUID, header.SOPInstanceUID, PEER)
        assert status == Status.SUCCESS


def make_request(db: Database, study_uids: list[str]) -> tuple[str, int]:
    """A request with ``study_uids`` attached (as the rules would attach them)."""
    req = RequestBook(db.sessions).create(draft(), "test")
    with db.sessions() as s, s.begin():
        for study_uid in study_uids:
            study = s.scalar(select(Study).where(Study.study_uid == study_uid))
            assert study is not None
            s.add(RequestStudy(request_id=req.id, study_id=study.id, matched_at=utcnow()))
    return req.reference, req.id


@pytest.fixture
def stored(db: Database, config: Path, tmp_path: Path) -> Stored:  # noqa: F811
    """Two studies (a CT series; three small series) stored and attached to a request."""
    content = ContentStore(tmp_path / "data")  # the data_dir of ``config``
    content.prepare()
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=6, rows=64, cols=64)
    small = synthetic.make_small_instances(tmp_path / "small", n=9, n_series=3)
    store(db, content, ct + small)
    uids = [
        str(pydicom.dcmread(p[0], stop_before_pixels=True).StudyInstanceUID) for p in (ct, small)
    ]
    reference, request_id = make_request(db, uids)
    return Stored(reference, request_id, content, db)


def export(config: Path, *argv: str) -> int:  # noqa: F811
    return main(["export-iso", *argv, "--config", str(config)])


def extract(iso_path: Path, into: Path) -> dict[str, Path]:
    """Every file of the image's Joliet tree, extracted with pycdlib; path -> file."""
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    files: dict[str, Path] = {}
    try:
        for parent, _dirs, names in iso.walk(joliet_path="/"):
            for name in names:
                source = f"{parent.rstrip('/')}/{name}"
                target = into / source.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                iso.get_file_from_iso(str(target), joliet_path=source)
                files[source.lstrip("/")] = target
    finally:
        iso.close()
    return files


def iso9660_names(iso_path: Path) -> list[str]:
    """Every path of the primary (ISO 9660) tree, as pycdlib reads it."""
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        return [
            f"{parent.rstrip('/')}/{name}"
            for parent, dirs, names in iso.walk(iso_path="/")
            for name in [*dirs, *names]
        ]
    finally:
        iso.close()


# -- the image read back ------------------------------------------------------------------


def test_export_iso_reads_back_whole(
    stored: Stored,
    config: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "discs" / "patient.iso"
    out.parent.mkdir()
    assert export(config, stored.reference, str(out), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    sources = stored.files()
    label = volume_label(stored.reference)
    assert set(shown) == {
        "reference", "path", "size", "sha256", "volume_id", "medium",
        "studies", "series", "instances", "notes", "event",
    }  # fmt: skip
    assert (shown["reference"], shown["path"], shown["volume_id"]) == (
        stored.reference, str(out), label,
    )  # fmt: skip
    assert (shown["studies"], shown["series"], shown["instances"]) == (2, 4, len(sources))
    assert shown["size"] == out.stat().st_size and shown["medium"] == "CD"
    assert shown["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert shown["event"]["actor"] == "cli:alice"
    assert shown["event"]["reason"] == f"disc image written ({len(sources)} instances)"
    assert shown["event"]["from"] == shown["event"]["to"] == "pending"  # a note, no move
    assert stored.timeline()[-1] == ("cli:alice", f"disc image written ({len(sources)} instances)")
    assert sorted(p.name for p in out.parent.iterdir()) == ["patient.iso"]  # no .partial

    # ISO 9660 level 1: 8.3 names, upper case, no extension on DICOM files; 8 levels at most.
    names = iso9660_names(out)
    assert {"/DICOMDIR.;1", "/README.TXT;1", "/README.HTM;1", "/MANIFEST.JSN;1", "/DICOM"} <= set(
        names
    )
    for name in names:
        for component in name.strip("/").split("/"):
            stem, _, ext = component.partition(";")[0].partition(".")
            assert stem.isupper() or stem.isdigit(), name
            assert len(stem) <= 8 and len(ext) <= 3 and component.upper() == component, name
        assert name.count("/") <= 8
    assert all(n.endswith(".;1") for n in names if n.startswith("/DICOM/") and ";" in n)

    root = tmp_path / "x"
    files = extract(out, root)
    assert {"DICOMDIR", "README.txt", "README.html", "MANIFEST.json"} <= set(files)
    assert {f for f in files if f.startswith("DICOM/")} == {
        f"DICOM/{p}" for p in _file_ids(root / "DICOMDIR")
    }
    # The DICOMDIR, read by pydicom: every instance, byte for byte the stored file.
    dicomdir = pydicom.dcmread(root / "DICOMDIR")
    assert dicomdir.FileSetID == label
    with read_fileset(root / "DICOMDIR") as fileset:
        assert len(fileset) == len(sources)
        for instance in fileset:
            assert instance.ReferencedFileID[0] == "DICOM"
            assert Path(instance.path).read_bytes() == sources[instance.SOPInstanceUID].read_bytes()
    # The manifest lists every other file with its size and SHA-256.
    manifest = json.loads(files["MANIFEST.json"].read_text("utf-8"))
    assert manifest["reference"] == stored.reference and (manifest["part"], manifest["parts"]) == (
        1, 1,
    )  # fmt: skip
    assert manifest["counts"] == {"studies": 2, "series": 4, "instances": len(sources)}
    assert {f["path"] for f in manifest["files"]} == set(files) - {"MANIFEST.json"}
    for entry in manifest["files"]:
        data = files[entry["path"]].read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
    readme = files["README.txt"].read_text("utf-8")
    assert stored.reference in readme
    assert files["README.html"].read_text("utf-8").lstrip().lower().startswith("<!doctype html")
    # The disc's wording: the disc named by its label, nothing to unzip.
    assert "This disc holds" in readme and f'drive named "{label}"' in readme
    assert "zip" not in readme.lower() and "PREVIEW" not in readme


def _file_ids(dicomdir: Path) -> set[str]:
    ds = pydicom.dcmread(dicomdir)
    return {
        "/".join(record.ReferencedFileID[1:])
        for record in ds.DirectoryRecordSequence
        if "ReferencedFileID" in record
    }


@SQLITE
def test_isoinfo_reads_the_image(stored: Stored, config: Path, tmp_path: Path) -> None:  # noqa: F811
    require_peer("genisoimage (isoinfo)", shutil.which("isoinfo") is not None)
    out = tmp_path / "disc.iso"
    assert export(config, stored.reference, str(out)) == 0
    label = volume_label(stored.reference)
    info = _isoinfo("-d", "-i", str(out))
    assert f"Volume id: {label}" in info and "Joliet" in info
    listing = _isoinfo("-l", "-i", str(out))
    assert "DICOMDIR.;1" in listing and "README.TXT;1" in listing
    # Every instance, by its ISO 9660 name, byte for byte the stored file.
    root = tmp_path / "x"
    extract(out, root)
    with read_fileset(root / "DICOMDIR") as fileset:
        instances = [(Path(i.path).relative_to(root).as_posix(), i.SOPInstanceUID) for i in fileset]
    sources = stored.files()
    assert len(instances) == len(sources)
    for file_id, uid in instances:
        data = subprocess.run(
            ["isoinfo", "-i", str(out), "-x", f"/{file_id}.;1"], capture_output=True, check=True
        ).stdout
        assert data == sources[uid].read_bytes(), file_id
    # The long names, through the Joliet tree.
    readme = subprocess.run(
        ["isoinfo", "-J", "-i", str(out), "-x", "/README.html"], capture_output=True, check=True
    ).stdout
    assert readme == (root / "README.html").read_bytes()


def _isoinfo(*argv: str) -> str:
    run = subprocess.run(["isoinfo", *argv], capture_output=True, text=True, check=True)
    return run.stdout


@SQLITE
def test_dcmtk_and_dciodvfy_read_the_dicomdir(
    stored: Stored,
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    require_peer("dcmtk", have_dcmtk() and shutil.which("dcmmkdir") is not None)
    require_peer("dicom3tools (dciodvfy)", shutil.which("dciodvfy") is not None)
    out = tmp_path / "disc.iso"
    assert export(config, stored.reference, str(out)) == 0
    root = tmp_path / "x"
    files = extract(out, root)
    dump = subprocess.run(["dcmdump", "-q", "DICOMDIR"], cwd=root, capture_output=True, text=True)
    assert dump.returncode == 0 and not dump.stderr, dump.stderr
    assert "[DICOM\\PT000000\\ST000000\\SE000000\\IM000000]" in dump.stdout
    # dcmmkdir +U reads the DICOMDIR and checks each referenced file; -w writes nothing.
    instances = sorted(f for f in files if f.startswith("DICOM/"))
    mkdir = subprocess.run(
        ["dcmmkdir", "-w", "-Nxc", "+U", "+D", "DICOMDIR", *instances],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert mkdir.returncode == 0 and "E:" not in mkdir.stderr, mkdir.stderr
    run = subprocess.run(["dciodvfy", "DICOMDIR"], cwd=root, capture_output=True, text=True)
    assert "Error" not in run.stderr, run.stderr


# -- bad input: a clear error, the exit status, and nothing final-named left -----------------


def _unknown(s: Stored, tmp: Path) -> tuple[str, Path]:
    return new_reference(), tmp / "out" / "disc.iso"  # well-formed, never issued


def _no_studies(s: Stored, tmp: Path) -> tuple[str, Path]:
    reference, _ = make_request(s.db, [])
    return reference, tmp / "out" / "disc.iso"


def _missing_file(s: Stored, tmp: Path) -> tuple[str, Path]:
    # The file went (a disk fault), the index does not know yet: found while writing.
    sorted(s.files().values())[-1].unlink()
    return s.reference, tmp / "out" / "disc.iso"


def _flagged_missing(s: Stored, tmp: Path) -> tuple[str, Path]:
    with s.db.sessions() as session, session.begin():
        session.execute(update(Instance).values(file_missing=True))
    return s.reference, tmp / "out" / "disc.iso"


def _cancelled(s: Stored, tmp: Path) -> tuple[str, Path]:
    RequestBook(s.db.sessions).cancel(s.reference, "test", "patient withdrew")
    return s.reference, tmp / "out" / "disc.iso"


def _exists(s: Stored, tmp: Path) -> tuple[str, Path]:
    (tmp / "out" / "disc.iso").write_bytes(b"an earlier image")
    return s.reference, tmp / "out" / "disc.iso"


def _missing_folder(s: Stored, tmp: Path) -> tuple[str, Path]:
    return s.reference, tmp / "out" / "no-such-folder" / "disc.iso"


def _a_folder(s: Stored, tmp: Path) -> tuple[str, Path]:
    (tmp / "out" / "disc.iso").mkdir()
    return s.reference, tmp / "out" / "disc.iso"


BAD_INPUT: list[tuple[str, Callable[[Stored, Path], tuple[str, Path]], int, str]] = [
    ("unknown-reference", _unknown, 1, "no request CR-"),
    ("request-without-studies", _no_studies, 1, "no stored instance"),
    ("instance-file-gone", _missing_file, 1, "has no file in the store"),
    ("instance-flagged-missing", _flagged_missing, 1, "missing from the store"),
    ("cancelled-request", _cancelled, 1, "is cancelled"),
    ("out-exists", _exists, 1, "exists: give another name, or replace it"),
    ("out-in-a-missing-folder", _missing_folder, 2, "does not exist: create it"),
    ("out-is-a-folder", _a_folder, 2, "is a folder"),
]


@SQLITE
@pytest.mark.parametrize(
    ("setup", "status", "message"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input(
    setup: Callable[[Stored, Path], tuple[str, Path]],
    status: int,
    message: str,
    stored: Stored,
    config: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "out").mkdir()
    reference, out = setup(stored, tmp_path)
    before = _tree(tmp_path / "out")
    events = stored.timeline()
    assert export(config, reference, str(out), "--json") == status
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert json.loads(captured.out)["error"] in captured.err
    assert _tree(tmp_path / "out") == before  # nothing new, nothing partial, nothing replaced
    assert stored.timeline() == events  # nothing recorded


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() if p.is_file() else None
        for p in sorted(folder.rglob("*"))
    }


@SQLITE
def test_force_replaces_an_existing_image(
    stored: Stored,
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "disc.iso"
    out.write_bytes(b"an earlier image")
    assert export(config, stored.reference, str(out), "--force") == 0
    assert out.read_bytes()[0x8001:0x8006] == b"CD001"  # the primary volume descriptor
    assert [p.name for p in tmp_path.glob(".*.partial")] == []


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write into: chmod for a user; a read-only tmpfs for root."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "courier-test", str(folder)],
        capture_output=True, text=True,
    )  # fmt: skip
    if mount.returncode != 0:  # root without CAP_SYS_ADMIN: permissions do not bind root
        pytest.skip(f"cannot make a read-only folder as root here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@SQLITE
def test_out_in_a_read_only_folder(
    stored: Stored,
    config: Path,  # noqa: F811
    read_only_folder: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert export(config, stored.reference, str(read_only_folder / "disc.iso")) == 2
    assert "choose a folder you can write to" in capsys.readouterr().err
    assert list(read_only_folder.iterdir()) == []
    assert not any("disc image" in reason for _actor, reason in stored.timeline())


# -- write_disc_image on its own --------------------------------------------------------------


@SQLITE
def test_an_instance_changing_while_written_fails_and_leaves_nothing(
    stored: Stored, tmp_path: Path
) -> None:
    items = package_items(stored.db.sessions, stored.content, stored.request_id)
    victim = items[-1].path
    calls = [0]

    def progress(done: int, total: int) -> None:
        calls[0] += 1
        if calls[0] == 1:  # hashed already, not yet copied: pycdlib must not pad it
            victim.write_bytes(victim.read_bytes()[:-100])

    with pytest.raises(UnreadableInstanceError, match="shorter than when it was hashed"):
        write_disc_image(items, tmp_path / "disc.iso", info=INFO, progress=progress)
    assert list(tmp_path.glob("*.iso")) == [] and list(tmp_path.glob(".*.partial")) == []


@SQLITE
def test_an_image_appearing_meanwhile_is_not_replaced(stored: Stored, tmp_path: Path) -> None:
    items = package_items(stored.db.sessions, stored.content, stored.request_id)
    out = tmp_path / "disc.iso"

    def progress(done: int, total: int) -> None:
        if not out.exists():
            out.write_bytes(b"someone else's")

    with pytest.raises(DiscExistsError):
        write_disc_image(items, out, info=INFO, progress=progress)
    assert out.read_bytes() == b"someone else's"
    assert list(tmp_path.glob(".*.partial")) == []


@SQLITE
def test_states_other_than_cancelled_export(
    stored: Stored,
    config: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    RequestBook(stored.db.sessions).transition(stored.reference, RequestState.OVERDUE, "t", "late")
    assert export(config, stored.reference, str(tmp_path / "disc.iso")) == 0
    assert stored.timeline()[-1][1].startswith("disc image written")


@SQLITE
@pytest.mark.parametrize("language", ["en", "ar"])
def test_the_readmes_on_the_disc_are_the_disc_variant(
    language: str, stored: Stored, tmp_path: Path
) -> None:
    """Byte for byte the disc README, not the ZIP one: no expiry even when the request has one."""
    items = package_items(stored.db.sessions, stored.content, stored.request_id)
    created, expires = datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)
    info = PackageInfo(stored.reference, language, "Imaging desk", created, expires)
    result = write_disc_image(items, tmp_path / "disc.iso", info=info)
    files = extract(result.path, tmp_path / "x")

    def readmes(medium: Medium) -> tuple[str, str]:
        return render_readmes(
            language=language, reference=stored.reference, contact="Imaging desk",
            created=created, expires=expires, part=1, parts=1, studies=result.studies,
            series=result.series, instances=result.instances, medium=medium,
            label=result.volume_id if medium == "disc" else None,
        )  # fmt: skip

    text, html = readmes("disc")
    assert files["README.txt"].read_text("utf-8") == text
    assert files["README.html"].read_text("utf-8") == html
    assert (text, html) != readmes("zip")
    assert f'lang="{language}" dir="{"rtl" if language == "ar" else "ltr"}"' in html
    assert result.volume_id in text and "zip" not in text.lower() and "zip" not in html.lower()


def test_volume_label() -> None:
    assert volume_label("CR-7KQ4-M2XD-9") == "CR_7KQ4_M2XD_9"
    assert volume_label("a-very-long-reference-1") == "A_VERY_LONG_REFE"
    with pytest.raises(ValueError, match="volume label"):
        volume_label("???")


# -- memory: flat whatever the instances' size -------------------------------------------------


_CHILD = textwrap.dedent(
    """\
    import sys
    from datetime import datetime, timezone
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from delivery.disc import write_disc_image
    from delivery.packaging.package import PackageInfo
    from tests.delivery.test_package import items_for
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    info = PackageInfo("CR-ABCD-EFGH-K", "en", "desk", datetime.now(timezone.utc))
    write_disc_image(items_for(sorted(src.glob("*.dcm"))), out, info=info)
    # VmHWM, not ru_maxrss: Linux carries the parent's (pytest's) high-water mark across exec.
    status = Path("/proc/self/status").read_text().splitlines()
    print("hwm_kb", next(ln.split()[1] for ln in status if ln.startswith("VmHWM:")), flush=True)
    """
)


def _peak_rss_kb(tmp_path: Path, n_slices: int) -> int:
    src = tmp_path / f"src-{n_slices}"
    synthetic.make_ct_series(src, n_slices=n_slices)
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO)))
    run = subprocess.run(
        [sys.executable, str(script), str(src), str(tmp_path / f"{n_slices}.iso")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    shutil.rmtree(src)
    (tmp_path / f"{n_slices}.iso").unlink()
    return int(run.stdout.strip().splitlines()[-1].split()[1])


def test_peak_memory_stays_flat(tmp_path: Path) -> None:
    small = _peak_rss_kb(tmp_path, 10)  # ~5 MB of instances
    big = _peak_rss_kb(tmp_path, 200)  # ~105 MB of instances
    # Generous bounds: the interpreter and libraries, plus directory records; never the data.
    assert big < 200 * 1024, big
    assert big - small < 48 * 1024, (small, big)

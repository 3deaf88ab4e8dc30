"""The offline viewer in a package (``VIEWER/``): files, manifest, notes, escaping, parts."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from delivery.packaging.package import PackageInfo, build_package, sweep_partial
from delivery.packaging.viewer import FOLDER, INDEX, ViewerOptions, level1, shown
from delivery.settings import DeliverySettings
from tests import synthetic
from tests.delivery.test_package import (
    CREATED,
    INFO,
    REPO,
    check_part,
    items_for,
    sources_of,
    unpack,
)

OPTIONS = ViewerOptions(max_side=256)


def _names(part: Path) -> list[str]:
    with zipfile.ZipFile(part) as zf:
        return zf.namelist()


def test_every_image_is_in_the_viewer_and_listed_in_the_manifest(tmp_path: Path) -> None:
    items = items_for(synthetic.make_ct_series(tmp_path / "src", n_slices=5, rows=64, cols=64))
    result = build_package(items, tmp_path / "out", info=INFO, viewer=OPTIONS)
    manifest = check_part(result.parts[0], tmp_path / "x", sources_of(items))  # hashes too
    listed = {f["path"] for f in manifest["files"]}
    images = sorted(p for p in listed if p.startswith(f"{FOLDER}/S001/"))
    assert images == [f"VIEWER/S001/{n:05d}.jpg" for n in range(1, 6)]
    assert {INDEX, "VIEWER/viewer.js", "VIEWER/viewer.css"} <= listed
    root = tmp_path / "x"
    assert all((root / p).read_bytes()[:3] == b"\xff\xd8\xff" for p in images)
    page = (root / INDEX).read_text("utf-8")
    for name in images:
        assert f'href="{name.removeprefix("VIEWER/")}"' in page  # the no-JavaScript list
    assert '<script src="viewer.js"></script>' in page
    assert "<style" not in page and "onclick" not in page  # no inline script or style
    assert not result.notes
    # Nothing of the spool is left beside the package.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["CR-ABCD-EFGH-K.zip"]


def _relative(record: dict[str, Any], base: int) -> dict[str, Any]:
    """A DICOMDIR record's JSON with its offsets (next record, lower level) from ``base``."""
    for tag in ("00041400", "00041420"):  # 0: none
        value = record[tag]["Value"][0]
        record[tag]["Value"] = [value - base if value else 0]
    return record


def test_the_dicomdir_is_the_same_with_and_without_the_viewer(tmp_path: Path) -> None:
    items = items_for(synthetic.make_ct_series(tmp_path / "src", n_slices=3, rows=64, cols=64))
    plain = build_package(items, tmp_path / "plain", info=INFO)
    viewer = build_package(items, tmp_path / "viewer", info=INFO, viewer=OPTIONS)
    records = []
    for k, result in enumerate((plain, viewer)):
        root = unpack(result.parts[0], tmp_path / f"x{k}")
        ds = pydicom.dcmread(root / "DICOMDIR")
        del ds.file_meta.MediaStorageSOPInstanceUID  # a fresh File-set UID per build
        # Record offsets count from the file's start, after the meta, whose length moves by
        # 2 bytes when a fresh UID has fewer digits (generate_uid drops leading zeros):
        # compare them from the first record on.
        base = int(ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity)
        records.append([_relative(r.to_json_dict(), base) for r in ds.DirectoryRecordSequence])
    assert records[0] == records[1]
    assert not (tmp_path / "x0" / FOLDER).exists() and (tmp_path / "x1" / INDEX).is_file()


def test_setting_on_by_default_and_off_means_no_viewer() -> None:
    assert DeliverySettings().offline_viewer is True
    options = DeliverySettings().offline_viewer_options()
    assert options is not None and options.max_side == 1024
    assert options.limits is not None and options.limits.memory_mb == 512
    assert DeliverySettings(offline_viewer=False).offline_viewer_options() is None
    tuned = DeliverySettings(offline_viewer_max_side=512, offline_viewer_quality=70)
    assert tuned.offline_viewer_options() == ViewerOptions(
        512,
        70,
        DeliverySettings().offline_viewer_options().limits,  # type: ignore[union-attr]
    )


def test_a_corrupt_series_gets_a_note_and_the_package_is_built(tmp_path: Path) -> None:
    studies = synthetic.make_transfer_syntax_studies(
        tmp_path / "src", syntaxes=[JPEG2000Lossless, synthetic.ExplicitVRLittleEndian]
    )
    for path in studies[JPEG2000Lossless]:  # same length, garbage codestream
        ds = pydicom.dcmread(path)
        frame = bytearray(ds.PixelData)
        frame[40:-40] = bytes(len(frame) - 80)
        ds.PixelData = bytes(frame)
        ds.save_as(path, enforce_file_format=True)
    items = items_for([p for ps in studies.values() for p in ps])
    result = build_package(items, tmp_path / "out", info=INFO, viewer=OPTIONS)
    manifest = check_part(result.parts[0], tmp_path / "x", sources_of(items))
    broken = items[0].series_uid
    assert any(n.startswith(f"series {broken}: offline viewer") for n in manifest["notes"])
    page = (tmp_path / "x" / INDEX).read_text("utf-8")
    assert "The images of this series cannot be shown here" in page
    names = _names(result.parts[0])
    good = [n for n in names if re.fullmatch(r"VIEWER/S\d{3}/\d{5}\.jpg", n)]
    assert len(good) == len(studies[synthetic.ExplicitVRLittleEndian])


def test_header_text_is_escaped_isolated_and_made_visible(tmp_path: Path) -> None:
    paths = synthetic.make_ct_series(tmp_path / "src", n_slices=2, rows=32, cols=32)
    hostile = '<script>alert(1)</script>\x1b[31m\u202egpj.exe "&'
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SeriesDescription = hostile
        ds.save_as(path, enforce_file_format=True)
    items = items_for(paths)
    result = build_package(items, tmp_path / "out", info=INFO, viewer=OPTIONS)
    with zipfile.ZipFile(result.parts[0]) as zf:
        page = zf.read(INDEX).decode("utf-8")
    assert "<script>alert" not in page and "\x1b" not in page and "\u202e" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\x1b[31m\\u202egpj.exe &#34;&amp;" in page
    assert re.search(r"<bdi>&lt;script&gt;.*?</bdi>", page)
    assert re.search(r"Series <bdi>\d+</bdi>", page)  # the number isolated too
    assert shown("a\u2066b\x00c") == "a\\u2066b\\x00c"


def test_each_part_has_a_viewer_of_its_own_images(tmp_path: Path) -> None:
    items = items_for(synthetic.make_small_instances(tmp_path / "src", n=12, n_series=3))
    result = build_package(
        items, tmp_path / "out", info=INFO, max_part_bytes=100_000, viewer=OPTIONS
    )
    assert len(result.parts) > 1
    total = 0
    for k, part in enumerate(result.parts):
        manifest = check_part(part, tmp_path / f"x{k}", sources_of(items))
        images = [f for f in manifest["files"] if f["path"].endswith(".jpg")]
        images = [f for f in images if f["path"].startswith("VIEWER/")]
        assert len(images) == manifest["counts"]["instances"]
        assert (tmp_path / f"x{k}" / INDEX).is_file()
        total += len(images)
    assert total == len(items)


def test_the_page_speaks_the_request_language(tmp_path: Path) -> None:
    items = items_for(synthetic.make_ct_series(tmp_path / "src", n_slices=1, rows=32, cols=32))
    info = PackageInfo("CR-ABCD-EFGH-K", "ar", "x", CREATED)
    result = build_package(items, tmp_path / "out", info=info, viewer=OPTIONS)
    with zipfile.ZipFile(result.parts[0]) as zf:
        page = zf.read(INDEX).decode("utf-8")
        readme = zf.read("README.txt").decode("utf-8")
    assert '<html lang="ar" dir="rtl">' in page
    assert "Your images" not in page
    assert "VIEWER" in readme


@pytest.mark.parametrize("language", ["ar", "zh-Hans"])
def test_catalog_translates_every_viewer_string(language: str) -> None:
    from babel.messages.extract import extract_from_dir
    from babel.messages.pofile import read_po

    from delivery.i18n import LOCALE_DIR, locale_name
    from delivery.packaging.viewer import ASSETS

    found = extract_from_dir(
        str(ASSETS),
        method_map=[("**.j2", "jinja2")],
        options_map={"**.j2": {"extensions": "jinja2.ext.i18n"}},
    )
    msgids = {m for _, _, m, _, _ in found if isinstance(m, str)}
    assert "Your images" in msgids
    po = LOCALE_DIR / locale_name(language) / "LC_MESSAGES" / "readme.po"
    with po.open("rb") as f:
        catalog = read_po(f)
    placeholder = re.compile(r"%\(\w+\)s")
    for msgid in sorted(msgids):
        message = catalog.get(msgid)
        assert message is not None and message.string, f"{language}: untranslated: {msgid!r}"
        assert sorted(placeholder.findall(str(message.string))) == sorted(
            placeholder.findall(msgid)
        ), msgid


def test_level1_names() -> None:
    assert level1("VIEWER/index.html") == "VIEWER/INDEX.HTM"
    assert level1("VIEWER/S001/00001.jpg") == "VIEWER/S001/00001.JPG"
    assert level1("VIEWER/viewer.css") == "VIEWER/VIEWER.CSS"


def test_manifest_of_a_viewer_package_is_valid_json(tmp_path: Path) -> None:
    items = items_for(synthetic.make_ct_series(tmp_path / "src", n_slices=2, rows=32, cols=32))
    result = build_package(items, tmp_path / "out", info=INFO, viewer=OPTIONS)
    with zipfile.ZipFile(result.parts[0]) as zf:
        manifest = json.loads(zf.read("MANIFEST.json"))
    assert manifest["counts"]["instances"] == 2


def test_the_lookup_table_draws_what_the_float_path_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """render_file's lookup table (grey_by_table) gives the float pipeline's picture byte
    for byte, for every transfer syntax the tests generate, with the header's window, a
    given one and min..max; it is used for the plain slices, not for reduced frames."""
    from imaging import render

    paths = synthetic.make_ct_series(tmp_path / "ct", n_slices=2, rows=64, cols=48)
    paths += [
        p for ps in synthetic.make_transfer_syntax_studies(tmp_path / "ts").values() for p in ps
    ]
    mono1 = pydicom.dcmread(paths[0])
    mono1.PhotometricInterpretation = "MONOCHROME1"
    mono1.save_as(tmp_path / "mono1.dcm", enforce_file_format=True)
    paths.append(tmp_path / "mono1.dcm")
    tabled = 0
    real = render.grey_by_table

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal tabled
        grey = real(*args, **kwargs)
        tabled += grey is not None
        return grey

    cases: list[dict[str, Any]] = [
        {"frame": None, "max_side": side, "window": window, "minmax": minmax}
        for side in (1024, 32)  # 32: reduced, the float path
        for window, minmax in ((None, False), ((40.0, 400.0), False), (None, True))
    ]
    for path in paths:
        for args in cases:
            with monkeypatch.context() as m:
                m.setattr(render, "grey_by_table", counted)
                fast = render.render_file(path, max_frame_values=10**8, **args)
            with monkeypatch.context() as m:
                m.setattr(render, "grey_by_table", lambda *a, **k: None)
                slow = render.render_file(path, max_frame_values=10**8, **args)
            assert fast == slow, (path.name, args)
    assert tabled >= 3 * 3  # the CT slices and MONOCHROME1, each window case


_CHILD = """
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
sys.path.insert(0, {repo!r})
from delivery.packaging.package import PackageInfo, build_package, sweep_partial
from delivery.packaging.viewer import ViewerOptions
from tests.delivery.test_package import items_for
src, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
info = PackageInfo("CR-ABCD-EFGH-K", "en", "x", datetime(2024, 1, 2, tzinfo=UTC))
def progress(done, total):
    if mode == "slow":
        print("progress", done, flush=True)
        import time; time.sleep(0.05)
build_package(items_for(sorted(src.glob("*.dcm"))), out, info=info, viewer=ViewerOptions(),
              progress=progress)
status = Path("/proc/self/status").read_text()
print("hwm", next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
"""


def _build_in_child(tmp_path: Path, src: Path, out: Path, mode: str) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(repo=str(REPO)))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(script), str(src), str(out), mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_memory_stays_flat_with_the_viewer(tmp_path: Path) -> None:
    src = tmp_path / "src"
    synthetic.make_ct_series(src, n_slices=240)  # ~126 MB of instances, 240 images
    child = _build_in_child(tmp_path, src, tmp_path / "out", "fast")
    stdout, _ = child.communicate(timeout=600)
    assert child.returncode == 0
    hwm_kb = int(stdout.strip().splitlines()[-1].split()[1])
    assert hwm_kb < 200 * 1024, hwm_kb  # the packaging process; the renderer is a child
    with zipfile.ZipFile(tmp_path / "out" / "CR-ABCD-EFGH-K.zip") as zf:
        assert sum(n.startswith("VIEWER/S001/") for n in zf.namelist()) == 240


def test_kill_9_leaves_a_spool_that_sweep_partial_removes(tmp_path: Path) -> None:
    src = tmp_path / "src"
    synthetic.make_ct_series(src, n_slices=40, rows=128, cols=128)
    out = tmp_path / "out"
    child = _build_in_child(tmp_path, src, out, "slow")
    assert child.stdout is not None
    for _ in range(5):
        assert child.stdout.readline().startswith("progress")
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    child.stdout.close()
    names = [p.name for p in out.iterdir()]
    assert any(".viewer." in n and n.endswith(".partial") for n in names), names
    assert not any(n.endswith(".zip") for n in names), names
    assert sweep_partial(out) >= 2  # the part and the spool
    assert list(out.iterdir()) == []


def test_one_child_renders_the_same_previews(tmp_path: Path) -> None:
    """With the viewer, the viewer's child renders the series previews too: the same
    thumbnails, and the same note for a series it cannot decode."""
    studies = synthetic.make_transfer_syntax_studies(
        tmp_path / "src", syntaxes=[JPEG2000Lossless, synthetic.ExplicitVRLittleEndian]
    )
    for path in studies[JPEG2000Lossless]:
        ds = pydicom.dcmread(path)
        frame = bytearray(ds.PixelData)
        frame[40:-40] = bytes(len(frame) - 80)
        ds.PixelData = bytes(frame)
        ds.save_as(path, enforce_file_format=True)
    items = items_for([p for ps in studies.values() for p in ps])
    manifests = []
    previews = []
    for k, viewer in enumerate((None, OPTIONS)):
        result = build_package(items, tmp_path / f"out{k}", info=INFO, viewer=viewer)
        with zipfile.ZipFile(result.parts[0]) as zf:
            manifests.append(json.loads(zf.read("MANIFEST.json"))["series"])
            previews.append({n: zf.read(n) for n in zf.namelist() if n.startswith("PREVIEW/")})
    assert manifests[0] == manifests[1]
    assert previews[0] == previews[1] and len(previews[0]) == 1


def test_every_frame_of_a_multiframe_instance_is_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    from pydicom.uid import UltrasoundMultiFrameImageStorage

    from delivery.packaging import viewer
    from tests.imaging.test_viewer_render import _image, _save

    def cine(name: str, frames: int) -> Path:
        ds = _image(24, 24, 3, 8, "RGB")
        ds.NumberOfFrames = frames
        ds.Modality = "US"
        ds.SeriesNumber = 7
        ds.InstanceNumber = 1
        ds.PixelData = np.zeros((frames, 24, 24, 3), np.uint8).tobytes()
        return _save(ds, UltrasoundMultiFrameImageStorage, tmp_path / name)

    monkeypatch.setattr(viewer, "MAX_FRAMES", 4)
    items = items_for([cine("us3.dcm", 3)])
    result = build_package(items, tmp_path / "a", info=INFO, viewer=OPTIONS)
    images = [n for n in _names(result.parts[0]) if n.startswith("VIEWER/S001/")]
    assert images == [f"VIEWER/S001/{n:05d}.jpg" for n in (1, 2, 3)]
    assert not any("offline viewer" in n for n in result.notes)
    items = items_for([cine("us9.dcm", 9)])
    result = build_package(items, tmp_path / "b", info=INFO, viewer=OPTIONS)
    images = [n for n in _names(result.parts[0]) if n.startswith("VIEWER/S001/")]
    assert len(images) == 4
    assert any("4 of its 9 frames shown" in n for n in result.notes)


def test_the_disc_manifest_lists_the_viewer_and_index_htm(tmp_path: Path) -> None:
    import hashlib
    import io

    import pycdlib

    from delivery.disc import write_disc_image

    items = items_for(synthetic.make_ct_series(tmp_path / "src", n_slices=3, rows=32, cols=32))
    info = PackageInfo("CR-ABCD-EFGH-K", "zh-Hans", "x", CREATED)
    write_disc_image(items, tmp_path / "disc.iso", info=info, viewer=OPTIONS)
    iso = pycdlib.PyCdlib()
    iso.open(str(tmp_path / "disc.iso"))
    try:

        def read(joliet: str) -> bytes:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{joliet}")
            return out.getvalue()

        manifest = json.loads(read("MANIFEST.json"))
        listed = {f["path"]: f for f in manifest["files"]}
        assert {"INDEX.HTM", INDEX, "VIEWER/viewer.js", "VIEWER/S001/00003.jpg"} <= set(listed)
        for name in ("INDEX.HTM", INDEX, "VIEWER/S001/00001.jpg"):
            assert hashlib.sha256(read(name)).hexdigest() == listed[name]["sha256"]
        assert 'lang="zh-Hans"' in read("INDEX.HTM").decode()
        assert "VIEWER" in read("README.txt").decode()
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, iso_path="/VIEWER/INDEX.HTM;1")  # level 1 names too
        assert out.getvalue() == read(INDEX)
    finally:
        iso.close()


def test_a_huge_declared_frame_count_picks_without_a_range(tmp_path: Path) -> None:
    """A 1x1 image whose header claims a billion frames: MAX_FRAMES evenly spaced picks,
    first and last included, without materialising every frame number."""
    from pydicom.uid import UltrasoundMultiFrameImageStorage

    from delivery.packaging import viewer
    from tests.imaging.test_viewer_render import _image, _save

    ds = _image(1, 1, 1, 8, "MONOCHROME2")
    ds.NumberOfFrames = 1_000_000_000
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, 1
    ds.PixelData = b"\0\0"
    path = _save(ds, UltrasoundMultiFrameImageStorage, tmp_path / "huge.dcm")
    picks, frames = viewer._frames(items_for([path])[0])
    assert frames == 1_000_000_000 and len(picks) == viewer.MAX_FRAMES
    assert picks[0] == 0 and picks[-1] == 999_999_999

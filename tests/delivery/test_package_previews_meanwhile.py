"""Series thumbnails rendered while the instances are copied (delivery.packaging.package):
the package is what it was when they were rendered first, parts included, and a failure
of the rendering fails the build cleanly."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import pytest

from delivery.packaging import package as package_module
from delivery.packaging.package import PREVIEW_BOUND, build_package
from tests import synthetic
from tests.delivery.test_package import INFO, items_for


def _series(tmp_path: Path) -> list[Path]:
    paths: list[Path] = []
    for s in range(3):  # three series of one study (a seed each)
        paths += synthetic.make_ct_series(
            tmp_path / f"s{s}", n_slices=2, rows=32, cols=32, seed=s + 1, study_uid="1.2.3.4"
        )
    return paths


def _first_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The build as it was: every thumbnail rendered before planning and copying."""

    class Rendered(dict):  # type: ignore[type-arg]
        def __init__(self, groups: object, limits: object) -> None:
            super().__init__(package_module._previews(groups, limits))  # type: ignore[arg-type]

        def wait(self) -> dict[str, bytes | str]:
            return dict(self)

    monkeypatch.setattr(package_module, "_Previews", Rendered)


#: Entries that differ between any two builds: a fresh File-set UID each time.
_PER_BUILD = ("DICOMDIR", "MANIFEST.json")


def _entries(zips: tuple[Path, ...]) -> list[list[tuple[str, int]]]:
    """Each part's entries in order, with their CRC (but for those of :data:`_PER_BUILD`)."""
    out = []
    for z in zips:
        with zipfile.ZipFile(z) as zf:
            out.append(
                [(i.filename, 0 if i.filename in _PER_BUILD else i.CRC) for i in zf.infolist()]
            )
    return out


@pytest.mark.parametrize(
    "limit",
    [None, "one part only with the real sizes", "three parts"],
    ids=["no-limit", "bound-says-two", "three-parts"],
)
def test_the_package_is_the_one_built_with_thumbnails_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: str | None
) -> None:
    items = items_for(_series(tmp_path / "in"))
    total = sum(i.path.stat().st_size for i in items)
    max_part = {
        None: None,
        # Room for the instances and real thumbnails, not for three thumbnails at their
        # bound: planned again with the real sizes, so still one part.
        "one part only with the real sizes": total + 3 * PREVIEW_BOUND // 2,
        "three parts": total // 3 + 80_000,
    }[limit]
    plans: list[int] = []
    real_plan = package_module._plan

    def counted(*args: object, **kwargs: object) -> object:
        plans.append(1)
        return real_plan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(package_module, "_plan", counted)
    meanwhile = build_package(items, tmp_path / "a", info=INFO, max_part_bytes=max_part)
    # Planned once at the thumbnails' bound; again with their real sizes only when the
    # bound made more than one part.
    assert len(plans) == (1 if limit is None else 2)
    monkeypatch.setattr(package_module, "_plan", real_plan)
    _first_rendered(monkeypatch)
    first = build_package(items, tmp_path / "b", info=INFO, max_part_bytes=max_part)
    assert [p.name for p in meanwhile.parts] == [p.name for p in first.parts]
    assert len(meanwhile.parts) == {None: 1, "one part only with the real sizes": 1}.get(limit, 3)
    assert _entries(meanwhile.parts) == _entries(first.parts)
    with zipfile.ZipFile(meanwhile.parts[0]) as zf:
        assert any(n.startswith("PREVIEW/") for n in zf.namelist())


def test_a_rendering_that_fails_fails_the_build_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    items = items_for(_series(tmp_path / "in"))

    def broken(*args: object, **kwargs: object) -> dict[str, bytes | str]:
        raise OSError(24, "Too many open files")  # the renderer's child could not start

    monkeypatch.setattr(package_module, "series_previews", broken)
    with pytest.raises(OSError, match="Too many open files"):
        build_package(items, tmp_path / "out", info=INFO)
    assert list((tmp_path / "out").iterdir()) == []
    assert not [t for t in threading.enumerate() if t.name == "package-previews"]

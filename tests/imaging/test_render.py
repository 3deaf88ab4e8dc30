"""imaging: frames rendered in a limited child; absurd sizes refused from the header; a
child that runs out of memory, hangs or dies costs one picture, never the caller."""

from __future__ import annotations

import ast
import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from PIL import Image

from imaging import (
    OverBudget,
    PixelBudget,
    Renderer,
    RenderFailed,
    RenderLimits,
    RenderTimeout,
    declared_size,
)
from tests import synthetic
from tests.imaging import hostile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imaging")
    return {
        "ct": synthetic.make_ct_series(root / "ct", n_slices=1)[0],
        "rle16k": hostile.rle_zeros(root / "rle16k.dcm", 16384, 16384),
        "lie30k": hostile.declared_only(root / "lie30k.dcm", 30000, 30000),
        "lie30k_rgb": hostile.declared_only(root / "lie30k_rgb.dcm", 30000, 30000, samples=3),
    }


@pytest.mark.parametrize(
    ("name", "budget"),
    [
        ("ct", PixelBudget(512, 512, 1, 1, 16)),
        ("rle16k", PixelBudget(16384, 16384, 1, 1, 16)),
        ("lie30k", PixelBudget(30000, 30000, 1, 1, 8)),
        ("lie30k_rgb", PixelBudget(30000, 30000, 1, 3, 8)),
    ],
)
def test_declared_size_is_read_from_the_header(
    files: dict[str, Path], name: str, budget: PixelBudget
) -> None:
    assert declared_size(pydicom.dcmread(files[name], stop_before_pixels=True)) == budget


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"Rows": 10, "Columns": 20, "NumberOfFrames": "-3", "SamplesPerPixel": 0}, 200),
        ({"Rows": 10, "Columns": 20, "NumberOfFrames": "abc"}, 200),
        ({"Rows": 10, "Columns": 20, "NumberOfFrames": "4", "SamplesPerPixel": 3}, 2400),
        ({}, 0),
    ],
)
def test_malformed_counts_never_lower_the_size_below_one_frame(
    values: dict[str, object], expected: int
) -> None:
    assert declared_size(values).total_values == expected


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_ct_slice_renders_in_the_child(files: dict[str, Path], fmt: str) -> None:
    with Renderer() as renderer:
        data = renderer.render(files["ct"], max_side=200, fmt=fmt)  # type: ignore[arg-type]
        assert renderer.pid is not None and renderer.pid != os.getpid()
    image = Image.open(io.BytesIO(data))
    assert image.format == fmt.upper()
    assert max(image.size) == 200
    low, high = image.convert("L").getextrema()
    # The phantom, windowed; not a blank square.
    assert int(high) - int(low) > 100  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["rle16k", "lie30k", "lie30k_rgb"])
def test_over_budget_is_refused_before_any_decoding(files: dict[str, Path], name: str) -> None:
    with Renderer() as renderer:
        with pytest.raises(OverBudget, match="over the limit of 50000000; not decoded"):
            renderer.render(files[name])
        assert renderer.pid is None  # refused from the header: no child was even started


def test_out_of_memory_costs_one_picture_and_the_next_frame_renders(
    files: dict[str, Path],
) -> None:
    limits = RenderLimits(max_frame_values=10**9, memory_mb=256, timeout_s=60)
    with Renderer(limits) as renderer:
        with pytest.raises(RenderFailed, match=r"out of memory|decoder stopped"):
            renderer.render(files["rle16k"])  # 512 MB decoded: over the child's 256 MB
        assert renderer.render(files["ct"])[:3] == b"\xff\xd8\xff"


def test_a_hung_child_is_killed_at_the_timeout(files: dict[str, Path]) -> None:
    # 3 s: the first render also waits for the child to import its libraries, which can
    # take over a second on a loaded machine.
    with Renderer(RenderLimits(timeout_s=3.0)) as renderer:
        renderer.render(files["ct"])
        hung = renderer.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # a decoder stuck forever, as far as the parent sees
        with pytest.raises(RenderTimeout, match="longer than 3 s"):
            renderer.render(files["ct"])
        with pytest.raises(ProcessLookupError):
            os.kill(hung, 0)  # killed and reaped
        assert renderer.render(files["ct"])[:3] == b"\xff\xd8\xff"  # a fresh child


def test_a_child_that_died_between_frames_is_replaced(files: dict[str, Path]) -> None:
    with Renderer() as renderer:
        renderer.render(files["ct"])
        first = renderer.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for _ in range(200):  # bounded: until the parent has seen it go
            if renderer.pid is None:
                break
            time.sleep(0.01)
        assert renderer.render(files["ct"])[:3] == b"\xff\xd8\xff"
        assert renderer.pid not in (None, first)


def test_a_child_that_dies_mid_frame_costs_that_frame_only(files: dict[str, Path]) -> None:
    with Renderer() as renderer:
        renderer.render(files["ct"])
        pid = renderer.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it takes the request, then dies before answering
        killer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
        killer.start()
        try:
            with pytest.raises(RenderFailed, match=r"decoder stopped \(signal 9\)"):
                renderer.render(files["ct"])
        finally:
            killer.join(10)
        assert renderer.render(files["ct"])[:3] == b"\xff\xd8\xff"


@pytest.mark.parametrize("name", ["not_dicom", "no_image"])
def test_no_image_is_a_reason_not_an_exception_leak(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.dcm"
    if name == "not_dicom":
        path.write_bytes(b"plain text, not DICOM")
    else:
        ds = pydicom.dcmread(synthetic.make_ct_series(tmp_path / "ct", n_slices=1)[0])
        for keyword in ("PixelData", "Rows", "Columns"):
            delattr(ds, keyword)
        ds.save_as(path)
    with Renderer() as renderer, pytest.raises(RenderFailed):
        renderer.render(path)


def test_imaging_imports_no_other_courier_package() -> None:
    """The package table's promise: imaging is pure (pydicom, numpy, Pillow, stdlib)."""
    ours = {"node", "store", "scp", "rules", "delivery", "portal", "release", "telemetry"}
    for source in (REPO / "imaging").glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in ours, f"{source.name} imports {name}"
    assert "imaging" not in sys.builtin_module_names

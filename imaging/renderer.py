"""Rendering in a limited child process: :class:`Renderer` and :func:`render_frame`.

A :class:`Renderer` starts one :mod:`imaging.worker` child (``python -m imaging.worker``, a
fresh interpreter: never a fork of a threaded server) on first use and sends it one frame
at a time, so a package of 300 series pays one process start, not 300. Before sending, it
reads the header itself (pixel data left unread) and refuses a frame over the pixel
budget without involving the child at all.

The child runs under :class:`RenderLimits`: its address space is capped (a decoder asking
for a 16k×16k frame gets ``MemoryError`` or dies), its CPU time per frame is capped, and
the parent waits at most ``timeout_s`` for each answer, then kills it. A child that dies,
hangs or answers nonsense is killed and replaced on the next request; the caller gets a
:class:`RenderFailed` / :class:`RenderTimeout` with the reason and carries on. Close the
renderer (or use it as a context manager) to end the child.

Not thread-safe: one renderer per thread (a package build uses its own).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from imaging.budget import declared_size
from imaging.errors import OverBudget, RenderFailed, RenderTimeout
from imaging.info import read_facts

if TYPE_CHECKING:  # imaging.render imports numpy and Pillow: the child's business
    from imaging.render import Format

#: Where ``imaging`` lives, for the child's import path (the node may run from a checkout).
_ROOT = str(Path(__file__).resolve().parent.parent)
_MAX_ANSWER = 64 * 1024 * 1024  # a thumbnail is kilobytes; more is a confused child


@dataclass(frozen=True)
class RenderLimits:
    """Bounds on decoding one frame (delivery's preview_* settings fill these).

    ``max_frame_values``: Rows × Columns × SamplesPerPixel of the frame decoded (checked
    from the header before decoding). ``memory_mb``: the child's whole address space,
    interpreter and libraries (about 150 MB) included. ``timeout_s``: wall and CPU seconds
    per frame.
    """

    max_frame_values: int = 50_000_000
    memory_mb: int = 512
    timeout_s: float = 20.0


class Renderer:
    """Renders frames in one limited child process, restarted after any failure."""

    def __init__(self, limits: RenderLimits | None = None) -> None:
        self.limits = limits or RenderLimits()
        self._child: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    def __enter__(self) -> Renderer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs (for monitoring and tests), else None."""
        child = self._child
        return None if child is None or child.poll() is not None else child.pid

    def close(self) -> None:
        """End the child (politely: end of input; killed if it lingers)."""
        child, self._child = self._child, None
        self._buffer = b""
        if child is None:
            return
        try:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            child.kill()
            child.wait()
        finally:
            if child.stdout is not None:
                child.stdout.close()

    def _kill(self) -> None:
        child, self._child = self._child, None
        self._buffer = b""
        if child is not None:
            child.kill()
            child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()

    def _start(self) -> subprocess.Popen[bytes]:
        if self._child is not None and self._child.poll() is None:
            return self._child
        self._kill()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH")]))
        # One thread each: thread pools reserve address space the cap would count.
        for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = "1"
        self._child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imaging.worker",
                "--memory-mb",
                str(self.limits.memory_mb),
                "--cpu-s",
                str(self.limits.timeout_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        return self._child

    def _read(self, child: subprocess.Popen[bytes], size: int | None, deadline: float) -> bytes:
        """``size`` bytes (None: one line, its newline dropped) before ``deadline``."""
        assert child.stdout is not None
        fd = child.stdout.fileno()
        while True:
            if size is None:
                end = self._buffer.find(b"\n")
                if end >= 0:
                    line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
                    return line
                if len(self._buffer) > 4096:
                    raise RenderFailed("the decoder answered nonsense")
            elif len(self._buffer) >= size:
                data, self._buffer = self._buffer[:size], self._buffer[size:]
                return data
            left = deadline - time.monotonic()
            if left <= 0:
                raise RenderTimeout(
                    f"decoding took longer than {self.limits.timeout_s:g} s; stopped"
                )
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                code = child.wait()
                why = f"signal {-code}" if code < 0 else f"exit status {code}"
                raise RenderFailed(f"the decoder stopped ({why}), out of memory or time")
            self._buffer += chunk

    def warm(self) -> None:
        """Start the child now (it imports its libraries meanwhile), so the first
        :meth:`render` does not wait for it."""
        self._start()

    def render(
        self,
        path: Path,
        *,
        frame: int | None = None,
        max_side: int = 384,
        fmt: Format = "jpeg",
        window: tuple[float, float] | None = None,
        minmax: bool = False,
    ) -> bytes:
        """JPEG or PNG bytes of frame ``frame`` (0-based; None: the middle one) of the
        instance at ``path``, its longer side at most ``max_side`` pixels; ``window`` and
        ``minmax`` as :func:`imaging.render.render_file` takes them.

        Raises :class:`OverBudget` (refused from the header: nothing decoded),
        :class:`RenderTimeout`, or :class:`RenderFailed` (no image, bad data, the child ran
        out of memory or crashed). The renderer stays usable after any of them.
        """
        budget = declared_size(read_facts(path))  # the few elements it needs: fast
        budget.check_frame(self.limits.max_frame_values)
        request = {
            "path": str(path),
            "frame": frame,
            "max_side": max_side,
            "max_frame_values": self.limits.max_frame_values,
            "format": fmt,
            "window": None if window is None else [float(window[0]), float(window[1])],
            "minmax": minmax,
        }
        child = self._start()
        deadline = time.monotonic() + self.limits.timeout_s
        try:
            assert child.stdin is not None
            child.stdin.write(json.dumps(request).encode() + b"\n")
            child.stdin.flush()
            head: dict[str, Any] = json.loads(self._read(child, None, deadline))
            if head.get("ok") is True:
                size = int(head["size"])
                if not 0 < size <= _MAX_ANSWER:
                    raise RenderFailed("the decoder answered nonsense")
                return self._read(child, size, deadline)
        except (RenderFailed, RenderTimeout):
            self._kill()
            raise
        except (OSError, ValueError, KeyError, TypeError):
            # A broken pipe (the child died while we wrote) or a garbled answer.
            code = child.poll()
            self._kill()
            why = "" if code is None else f" ({f'signal {-code}' if code < 0 else code})"
            raise RenderFailed(f"the decoder stopped{why}") from None
        reason = str(head.get("reason", "unknown"))[:300]
        if head.get("kind") == "over_budget":
            raise OverBudget(reason)
        if reason == "out of memory":
            self._kill()  # start the next frame in a fresh address space
            reason = f"out of memory (limit {self.limits.memory_mb} MB)"
        raise RenderFailed(reason)


def render_frame(
    path: Path,
    frame: int | None = None,
    max_side: int = 384,
    limits: RenderLimits | None = None,
    fmt: Format = "jpeg",
) -> bytes:
    """One frame rendered in a child of its own (see :meth:`Renderer.render`); for many
    frames keep a :class:`Renderer` instead, which starts one child for all of them."""
    with Renderer(limits) as renderer:
        return renderer.render(path, frame=frame, max_side=max_side, fmt=fmt)

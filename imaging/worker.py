"""The decoding child: ``python -m imaging.worker --memory-mb N --cpu-s S``.

Started by :class:`imaging.Renderer` (never by hand). It imports its libraries, then limits
itself with ``resource.setrlimit``: the address space to ``--memory-mb`` for good (a
decoder that asks for more gets ``MemoryError``, or dies, instead of the node), and before
each request the CPU time to ``--cpu-s`` more seconds than it has used (the kernel sends
SIGXCPU past it). The parent also bounds the wall time and kills the child past it.

Protocol, one request at a time: the parent writes one JSON line
``{"path": ..., "frame": int|null, "max_side": int, "max_frame_values": int, "format":
"jpeg"|"png", "window": [centre, width]|null, "minmax": bool}``; the child answers one
JSON line ``{"ok": true, "size": n}`` followed by
n bytes of picture, or ``{"ok": false, "kind": "over_budget"|"failed", "reason": ...}``.
End of input ends the child. Reasons carry no patient data; stderr goes nowhere (a
decoder's warning could quote a header value).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path
from typing import BinaryIO

from imaging.errors import OverBudget
from imaging.render import render_file


def _limit_cpu(seconds: float) -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(spent + seconds) + 1
    if hard != resource.RLIM_INFINITY and soft > hard:
        soft = hard
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _window(value: object) -> tuple[float, float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError("a window is [centre, width]")
    return float(value[0]), float(value[1])


def _answer(out: BinaryIO, head: dict[str, object], body: bytes = b"") -> None:
    out.write(json.dumps(head).encode("ascii") + b"\n" + body)
    out.flush()


def serve(requests: BinaryIO, out: BinaryIO, cpu_s: float) -> None:
    """Answer requests from ``requests`` until it ends (see the module docstring)."""
    for line in requests:
        try:
            req = json.loads(line)
            _limit_cpu(cpu_s)
            picture = render_file(
                Path(req["path"]),
                frame=req.get("frame"),
                max_side=int(req["max_side"]),
                max_frame_values=int(req["max_frame_values"]),
                fmt=req.get("format", "jpeg"),
                window=_window(req.get("window")),
                minmax=bool(req.get("minmax", False)),
            )
        except OverBudget as exc:
            _answer(out, {"ok": False, "kind": "over_budget", "reason": str(exc)})
        except MemoryError:
            _answer(out, {"ok": False, "kind": "failed", "reason": "out of memory"})
        except Exception as exc:  # RenderFailed, or a bad request: say so, keep serving
            _answer(out, {"ok": False, "kind": "failed", "reason": str(exc)[:300]})
        else:
            _answer(out, {"ok": True, "size": len(picture)}, picture)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m imaging.worker")
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--cpu-s", type=float, required=True)
    args = parser.parse_args(argv)
    limit = args.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core full of pixels
    serve(sys.stdin.buffer, sys.stdout.buffer, args.cpu_s)


if __name__ == "__main__":
    main()

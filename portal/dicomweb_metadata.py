"""WADO-RS metadata (DICOM JSON of each instance's header), kept on disk once made.

Turning a header into DICOM JSON (pydicom's ``to_json_dict``) costs milliseconds an
instance; a viewer asks for a series' metadata each time it opens it. So each
instance's JSON is made once and kept as ``meta-<sha256>-v<version>.meta`` in the
grant's package's viewer folder (:func:`portal.viewer_data.viewer_folder`, beside the
viewer's pictures): keyed by the SHA-256 the index holds for the file, a re-sent
(changed) instance is a new key and its old JSON is never served; the version changes
with the JSON's shape. The files count against the same ``portal.viewer_cache_mb``
budget as the pictures (:mod:`portal.viewer_render`: the oldest go first), go with the
package's folder, and are not written once it is gone (a purged package).

What is kept is the answer's bytes for one instance, with the instance's address in each
``BulkDataURI`` left as a marker filled in when served (the public URL may change), so
an answer is the kept files joined, never parsed again. A header that cannot be read is
left out of the answer (logged by exception type and SOP Instance UID; the route answers
206, :mod:`portal.dicomweb_partial`), and nothing is kept for it.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement

from portal.context import PortalContext
from portal.dicomweb_scope import Scope, Stored
from portal.dicomweb_token import base_url
from portal.viewer_render import CACHE_SUFFIXES, kept, private_dir, write_private

log = logging.getLogger("courier.portal.dicomweb")

VERSION = 1  # bump when the JSON kept for an instance changes shape
BULK_THRESHOLD = 64 * 1024
_SUFFIX = ".meta"
assert _SUFFIX in CACHE_SUFFIXES  # counted in the viewer folder's budget
_MARK = "courier:bulk-data-uri"  # stands for the instance's WADO-RS address
_MARKER = json.dumps(_MARK).encode()  # as it is in the kept bytes


def _bulk(_element: DataElement) -> str:
    return _MARK


def instance_json(path: Path, x: Stored) -> bytes:
    """The DICOM JSON object of the instance at ``path``, as answer bytes (see the module
    docstring). Raises whatever reading the header raises."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    doc: dict[str, Any] = ds.to_json_dict(
        bulk_data_threshold=BULK_THRESHOLD,
        bulk_data_element_handler=_bulk,
        suppress_invalid_tags=True,
    )
    doc["00083002"] = {"vr": "UI", "Value": [x.transfer_syntax_uid]}
    # As starlette's JSONResponse writes it (the answer was one JSONResponse before).
    text = json.dumps(doc, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode()


def _kept(ctx: PortalContext, scope: Scope, x: Stored) -> bytes | None:
    """The instance's JSON, from the cache or made and kept there; None when unreadable."""
    cached = scope.cache / f"meta-{x.sha256}-v{VERSION}{_SUFFIX}" if scope.cache else None
    if cached is not None:
        try:
            return cached.read_bytes()
        except OSError:
            pass
    assert ctx.content is not None  # authorize refused otherwise
    try:
        data = instance_json(ctx.content.path(x.relpath), x)
    except Exception as exc:  # an unreadable header: that instance is left out
        log.error(
            "DICOMweb: a header could not be read (%s) sop_uid=%s", type(exc).__name__, x.sop_uid
        )
        return None
    if cached is not None and scope.package_folder is not None and scope.package_folder.is_dir():
        try:
            private_dir(cached.parent)
            tmp = cached.with_name(f".{cached.name}.{threading.get_ident()}.tmp")
            write_private(tmp, data)
            tmp.replace(cached)
            kept(cached.parent, len(data), ctx.portal.viewer_cache_mb * 1_000_000)
        except OSError as exc:
            log.warning("DICOMweb: metadata not kept (%s)", type(exc).__name__)
    return data


def metadata(ctx: PortalContext, scope: Scope, found: list[Stored]) -> tuple[bytes, list[Stored]]:
    """The metadata answer for ``found`` (a JSON array, one object per readable
    instance, in order) and the instances left out (header unreadable). Blocking: call
    on a worker thread."""
    root = base_url(ctx)
    parts = []
    left_out = []
    for x in found:
        data = _kept(ctx, scope, x)
        if data is None:
            left_out.append(x)
            continue
        if _MARKER in data:
            url = f"{root}/studies/{x.study_uid}/series/{x.series_uid}/instances/{x.sop_uid}"
            data = data.replace(_MARKER, json.dumps(url, ensure_ascii=False).encode())
        parts.append(data)
    return b"[" + b",".join(parts) + b"]", left_out

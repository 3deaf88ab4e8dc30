"""IP addresses in settings: the one check of an address a server listens on.

Here, below every package, because the DICOM side (``scp.settings``) and the web side
(``portal.settings``) both listen, and neither may import the other (nor ``node``).
Stdlib and pydantic only.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import AfterValidator


def listen_address(value: str) -> str:
    """``value`` as the canonical text of an IP address (``::1``, ``0.0.0.0``); raises
    ValueError naming the bad value when it is not one (a host name is refused: a
    server binds to an address, and a name may resolve to another one tomorrow)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address to listen on") from None


ListenAddress = Annotated[str, AfterValidator(listen_address)]
"""A settings field holding an address to listen on (checked by :func:`listen_address`)."""

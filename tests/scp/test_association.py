"""The SCU association helper (scp.association) against a pynetdicom peer on loopback:
TCP_NODELAY on the socket, release on a normal exit, abort on an error, the socket closed
either way, the rejection result, and the reachability check's reason."""

from __future__ import annotations

import socket

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from scp import association
from tests.peers import free_port
from tests.pynetdicom_peers import PynetdicomScp

TIMEOUTS = {"connect_timeout_s": 5.0, "dimse_timeout_s": 5.0, "network_timeout_s": 5.0}


def _ae() -> AE:
    ae = AE(ae_title="COURIER")
    ae.add_requested_context(Verification)
    return ae


def test_an_association_has_no_nagle_and_is_released_then_closed() -> None:
    with PynetdicomScp("PEER", contexts=[Verification]) as peer:
        with association.opened(_ae(), "127.0.0.1", peer.port, "PEER", **TIMEOUTS) as assoc:
            assert assoc.is_established
            sock = assoc.dul.socket.socket  # type: ignore[union-attr]
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert assoc.send_c_echo().Status == 0x0000
        assert assoc.is_released and not assoc.is_established
        assert sock.fileno() == -1  # closed


def test_an_error_in_the_block_aborts() -> None:
    with PynetdicomScp("PEER", contexts=[Verification]) as peer:
        with (
            pytest.raises(ValueError),
            association.opened(_ae(), "127.0.0.1", peer.port, "PEER", **TIMEOUTS) as assoc,
        ):
            raise ValueError("the caller's")
        assert assoc.is_aborted and not assoc.is_established


def test_a_refusal_is_yielded_with_its_result() -> None:
    peer = PynetdicomScp("PEER", contexts=[Verification], require_called_ae=True)
    with peer, association.opened(_ae(), "127.0.0.1", peer.port, "WRONG", **TIMEOUTS) as assoc:
        assert assoc.is_rejected
        assert association.rejection_result(assoc) == association.REJECTED_PERMANENT


def test_unreachable_names_the_reason() -> None:
    assert association.unreachable("127.0.0.1", free_port(), 2.0) == "Connection refused"
    with PynetdicomScp("PEER", contexts=[Verification]) as peer:
        assert association.unreachable("127.0.0.1", peer.port, 2.0) is None

"""The C-STORE screen: ``reject`` rules, evaluated on the header and the association.

Rules are compiled once (``rules.RuleSet``) and fetched from a provider on each call,
so a hot reload takes effect on the next instance. When the running rules hold no
``reject`` rule (the common case) nothing is read: the screen costs one attribute look-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pydicom

from rules import AssociationFacts, RuleSet, facts_from_dataset
from scp.header import Header
from scp.ingest import Peer, Status

log = logging.getLogger("courier.scp.screen")


class RuleScreen:
    """Answers 0x0124 for an instance a ``reject`` rule refuses; None lets it through."""

    def __init__(self, rules: Callable[[], RuleSet]) -> None:
        self._rules = rules
        self._checked: tuple[int, bool] = (0, False)

    def _has_reject(self, ruleset: RuleSet) -> bool:
        key = id(ruleset)
        if self._checked[0] != key:
            self._checked = (key, any(r.action == "reject" for r in ruleset))
        return self._checked[1]

    def __call__(self, path: Path, header: Header, peer: Peer) -> int | None:
        ruleset = self._rules()
        if not self._has_reject(ruleset):
            return None
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        facts = facts_from_dataset(
            ds, AssociationFacts(peer.calling_ae, peer.called_ae, peer.host), wanted=ruleset.wanted
        )
        decision = ruleset.decide(facts, "store")
        if decision.action != "reject":
            return None
        log.info(
            "refused by rule %s uid=%s from=%s",
            decision.rule,
            header.sop_instance_uid,
            peer.calling_ae,
        )
        return int(Status.REFUSED_BY_RULE)

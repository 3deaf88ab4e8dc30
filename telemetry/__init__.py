"""Telemetry: the node's operational signals: Prometheus counters (:mod:`telemetry.metrics`),
the one-object-per-line JSON log format (:mod:`telemetry.jsonlog`), and the sets of
characters that text from outside must never carry raw into a log line, a terminal or the
index (:mod:`telemetry.text`).

Why a package of its own: the producers (``scp`` counts instances and refused
associations, ``delivery`` times package builds, ``portal`` counts code checks, lockouts
and staff sign-ins) may not import each other nor ``node``, and ``store`` owns
persistence, not counters. Like ``rules``, ``telemetry`` sits at the bottom of the graph
and **imports nothing of ours** (only ``prometheus_client`` and the standard library), so
every package may import it.

Producers call the small functions of :mod:`telemetry.metrics` (one line each); the
label values are fixed sets chosen here, never data from a peer, so no patient data
and no unbounded label can reach a scrape. ``node`` decides where the counters live
(:func:`telemetry.metrics.configure`); ``portal`` serves them at ``/metrics``.
"""

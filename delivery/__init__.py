"""Delivery: packaging, channels (email, SMS, file), the outbox relay and templates.

Not built yet (see the delivery issue). May import ``store`` and ``telemetry``.
"""

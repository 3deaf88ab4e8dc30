"""Tests of delivery: window, scheduling, settings, packaging, channels, outbox."""

"""Tests of the pure rules engine (``rules/``): tables of YAML, facts and expectations."""

"""The release policy's model, for the settings that hold one (node.yaml's
``delivery.release``): :class:`rules.policy.ReleasePolicy`, the same shape as a release
rule's ``release:`` block. Applying it is :mod:`release.embargo`'s work. Light to
import (pydantic only), as every ``courier`` command reads node.yaml."""

from rules.policy import Duration, ReleasePolicy, parse_duration

__all__ = ["Duration", "ReleasePolicy", "parse_duration"]

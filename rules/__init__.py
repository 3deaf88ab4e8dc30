"""Rules: the pure rules engine (YAML schema, strict loader, matcher, explain).

Owns: reading admins' YAML strictly (``rules.source``), the rules schema, and deciding
what happens to a study. Imports nothing from the rest of Courier, so it can be tested
and used offline (``courier rules test``) without a node.
"""

"""Node: the node as a whole.

Owns the node.yaml schema composed of each package's settings (``node.config``), the
composition root that builds engines, stores and servers once at start-up
(``node.app``), the receiving processes it starts (``node.receiver``, supervised by
``node.receivers``), and the ``courier`` command line (``node.cli``). The only package that
may import every other one; nothing imports ``node``.
"""

__version__ = "0.1.0"

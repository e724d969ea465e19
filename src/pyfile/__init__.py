"""pyfile: one executable file for a GGUF language model.

This top-level module stays tiny on purpose: it travels inside every pyfile, and the
run-time package ``pyfile.runtime`` imports it only for the version.
"""

__version__ = "0.1.0"

#: Version of the on-disk format (the manifest's ``format`` field).
FORMAT_VERSION = 1

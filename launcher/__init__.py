"""The launcher: the POSIX sh stub at the front of every pyfile and the Python bootstrap
it hands over to. Both are templates read at build time by :mod:`pyfile.stub`."""

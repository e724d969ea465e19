"""``python -m pyfile`` is the same as the ``pyfile`` command."""

from pyfile.cli import main

if __name__ == "__main__":
    main()

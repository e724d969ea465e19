# Entry point when the pyfile is run as  python3 model.pyfile ...  (zipimport).
# zipimport reads ZIP64 archives only from Python 3.13 on; ./model.pyfile always works.
import sys

from pyfile.runtime.main import main

sys.exit(main(sys.argv[0], sys.argv[1:]))

# pyfile bootstrap: run by the stub as  python -c BOOTSTRAP PYFILE ARGS...
# It must stay small, use only the standard library, contain no single quote (it is
# embedded in the stub between single quotes), and run on every Python >= 3.9.
# zipimport cannot read ZIP64 archives before 3.13, so the runtime is imported through
# zipfile instead, and the weights are never extracted.
import sys


def _pyfile_boot():
    if sys.path and sys.path[0] == "":
        del sys.path[0]  # never import from the current directory
    import zipfile
    path = sys.argv[1]
    try:
        with open(path, "rb") as f:
            try:  # wait for an in-place edit (args --set, add) to finish its zip directory
                import fcntl
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            except (ImportError, OSError):
                pass
            zf = zipfile.ZipFile(path)
        if "pyfile/runtime/main.py" not in zf.NameToInfo:
            # A cut file whose last end record is the one inside the runtime bundle.
            raise ValueError("no pyfile runtime in its zip directory")
    except Exception as e:
        sys.stderr.write("pyfile: %s: damaged or truncated pyfile (%s)\n" % (path, e))
        sys.exit(1)

    class ArchiveImporter:
        """Imports the bundled pyfile package straight from the archive."""

        def __init__(self):
            self.names = set(zf.namelist())

        def _locate(self, name):
            base = name.replace(".", "/")
            if base + "/__init__.py" in self.names:
                return base + "/__init__.py", True
            if base + ".py" in self.names:
                return base + ".py", False
            return None, False

        def find_spec(self, name, path=None, target=None):
            if name != "pyfile" and not name.startswith("pyfile."):
                return None
            member, is_pkg = self._locate(name)
            if member is None:
                return None
            import importlib.util
            spec = importlib.util.spec_from_loader(name, self, is_package=is_pkg)
            spec.origin = path_in_archive(member)
            spec.has_location = True
            return spec

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            member, _ = self._locate(module.__name__)
            origin = path_in_archive(member)
            source = zf.read(member)
            code = self._bytecode(member, source, origin)
            if code is None:
                code = compile(source, origin, "exec", dont_inherit=True)
            module.__file__ = origin
            exec(code, module.__dict__)

        def _bytecode(self, member, source, origin):
            # Bytecode made at build time (pyfile/stub.py), used when this interpreter
            # wrote it and it was made from this very source: no compiling at each start.
            import importlib.util, marshal, _imp
            tag = sys.implementation.cache_tag
            head, _, tail = member.rpartition("/")
            pyc = "%s/__pycache__/%s.%s.pyc" % (head, tail[:-3], tag)
            if tag is None or pyc not in self.names:
                return None
            data = zf.read(pyc)
            if (data[:4] != importlib.util.MAGIC_NUMBER
                    or data[8:16] != importlib.util.source_hash(source)):
                return None
            code = marshal.loads(data[16:])
            _imp._fix_co_filename(code, origin)
            return code

        def get_data(self, filename):
            prefix = path + "/"
            if not filename.startswith(prefix):
                raise OSError("not in the archive: " + filename)
            return zf.read(filename[len(prefix):])

    def path_in_archive(member):
        return path + "/" + member

    sys.meta_path.insert(0, ArchiveImporter())
    sys.argv = [path] + sys.argv[2:]
    from pyfile.runtime.main import main
    sys.exit(main(path, sys.argv[1:]))


_pyfile_boot()

"""The run-time travels inside every pyfile: it must never import build-time code, and its
tree must read as the architecture (a docstring per module that says its one job)."""

import ast
import os

import pyfile

RUNTIME = os.path.join(os.path.dirname(pyfile.__file__), "runtime")
#: What runtime/ may take from the ``pyfile`` package itself (pyfile/__init__.py travels too).
PACKAGE_NAMES = {"__version__", "FORMAT_VERSION"}


def _modules():
    for folder, dirs, files in os.walk(RUNTIME):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(RUNTIME))
                parts = rel[:-3].split(os.sep)
                package = parts if name == "__init__.py" else parts[:-1]
                yield path, ["pyfile", *[p for p in package if p != "__init__"]]


def build_time_imports(path, package):
    """Every import in ``path`` (a module of package ``package``) that reaches pyfile code
    outside runtime/, as 'line: text'."""
    bad = []
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [(mod, [a.name for a in node.names])]
        else:
            continue
        for mod, names in targets:
            if mod == "pyfile":
                extra = set(names or ["*"]) - PACKAGE_NAMES
                if extra:
                    bad.append(f"{node.lineno}: from pyfile import {', '.join(sorted(extra))}")
            elif mod.startswith("pyfile.") and not (mod + ".").startswith("pyfile.runtime."):
                bad.append(f"{node.lineno}: {mod}")
    return bad


def test_runtime_never_imports_build_time_code():
    offenders = {}
    count = 0
    for path, package in _modules():
        count += 1
        bad = build_time_imports(path, package)
        if bad:
            offenders[os.path.relpath(path, RUNTIME)] = bad
    assert count > 30, "runtime/ modules not found"
    assert offenders == {}


def test_the_check_catches_a_build_time_import(tmp_path):
    """The checker itself: relative and absolute imports of build-time modules are caught,
    the allowed names from pyfile/__init__.py are not."""
    mod = tmp_path / "m.py"
    mod.write_text("from ... import __version__\nfrom ... import builder\n"
                   "from ...zipwriter import ZipWriter\nimport pyfile.gguf\n"
                   "from ..container import archive\n")
    bad = build_time_imports(str(mod), ["pyfile", "runtime", "server"])
    assert bad == ["2: from pyfile import builder", "3: pyfile.zipwriter", "4: pyfile.gguf"]


def test_every_runtime_module_says_its_job():
    missing = [os.path.relpath(p, RUNTIME) for p, _ in _modules()
               if not ast.get_docstring(ast.parse(open(p, encoding="utf-8").read()))]
    assert missing == []


def test_runtime_folders_are_the_concerns():
    folders = sorted(d for d in os.listdir(RUNTIME)
                     if os.path.isdir(os.path.join(RUNTIME, d)) and d != "__pycache__")
    assert folders == ["backend", "container", "modes", "rpc", "server"]
    top = sorted(f for f in os.listdir(RUNTIME) if f.endswith(".py"))
    assert top == ["__init__.py", "errors.py", "main.py", "options.py", "ready.py"]


def test_every_package_is_installed_by_pip():
    """pyproject.toml lists its packages by name: a new folder of the runtime left out of the
    list is missing from `pip install .` (and so from every file such an install builds)."""
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.dirname(pyfile.__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    src = os.path.dirname(os.path.dirname(pyfile.__file__))
    found = set()
    for folder, dirs, files in os.walk(os.path.dirname(pyfile.__file__)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        if "__init__.py" in files:
            found.add(os.path.relpath(folder, src).replace(os.sep, "."))
    assert found <= listed, sorted(found - listed)

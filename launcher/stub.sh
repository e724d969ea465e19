#!/bin/sh
# This file is a pyfile: a POSIX shell script followed by a zip archive that holds a
# language model and the program that runs it. Run it:   ./THIS_FILE --help
# Look inside without running anything:  unzip -l THIS_FILE   or   pyfile inspect THIS_FILE
# Made by pyfile @VERSION@.
pyfile_self=$0
pyfile_boot='@BOOTSTRAP@'
pyfile_main() {
    case ${ZSH_EVAL_CONTEXT:-} in *:file*) pyfile_self= ;; esac
    if [ -n "${BASH_VERSION:-}" ] && [ "${BASH_SOURCE:-$0}" != "$0" ]; then pyfile_self= ; fi
    if [ -z "$pyfile_self" ] || [ ! -f "$pyfile_self" ] || [ ! -r "$pyfile_self" ]; then
        echo "pyfile: run this file by its path (./model.pyfile or sh model.pyfile); it cannot be sourced or piped into a shell" >&2
        return 2
    fi
    if [ -n "${PYFILE_PYTHON:-}" ]; then
        if "$PYFILE_PYTHON" -S -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; then
            exec "$PYFILE_PYTHON" -c "$pyfile_boot" "$pyfile_self" "$@"
        fi
        echo "pyfile: PYFILE_PYTHON=$PYFILE_PYTHON is not a working Python 3.9 or newer" >&2
        return 127
    fi
    pyfile_tried=
    for pyfile_py in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" python3.14 python3.13 python3.12 python3.11 python3.10 python3.9 python3 python; do
        [ -n "$pyfile_py" ] || continue
        command -v "$pyfile_py" >/dev/null 2>&1 || continue
        if "$pyfile_py" -S -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1; then
            exec "$pyfile_py" -c "$pyfile_boot" "$pyfile_self" "$@"
        fi
        pyfile_tried="$pyfile_tried $pyfile_py"
    done
    echo "pyfile: no Python 3.9 or newer found (tried:${pyfile_tried:- nothing on PATH}; PATH=$PATH). Install python3, or set PYFILE_PYTHON=/path/to/python3" >&2
    return 127
}
pyfile_main "$@"
pyfile_rc=$?
# Reached only when Python could not be started. Stop here, before any shell reads the zip
# bytes below: 'return' ends a sourced read, 'exit' everything else.
return "$pyfile_rc" 2>/dev/null
exit "$pyfile_rc"

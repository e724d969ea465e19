#!/bin/sh
# This file is a pyfile: a POSIX shell script followed by a zip archive that holds a
# language model and the program that runs it. Run it:   ./THIS_FILE --help
# Look inside without running anything:  unzip -l THIS_FILE   or   pyfile inspect THIS_FILE
# Made by pyfile @VERSION@.
pyfile_self=$0
pyfile_boot='@BOOTSTRAP@'
# The interpreters this file carries, each as " MACHINE:OFFSET:SIZE:SHA256": a
# tar.gz stored in this file at OFFSET (a multiple of 65536); MACHINE "any" is the part all
# machines share (the standard library). Filled in when the file is written; blank in a
# file that carries none (it then looks for a Python on PATH).
pyfile_carried='@CARRIED@'
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
    case $pyfile_carried in
        *[!\ ]*) pyfile_carried_main "$@"; return ;;
    esac
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
# The carried interpreter for this machine: unpacked once into the cache (checked against
# its SHA-256, under a lock where flock exists, through a temporary folder renamed into
# place), then run straight from there on every later start.
pyfile_carried_main() {
    pyfile_os=$(uname -s 2>/dev/null) || pyfile_os=unknown
    pyfile_m=$(uname -m 2>/dev/null) || pyfile_m=unknown
    case $pyfile_m in amd64) pyfile_m=x86_64 ;; arm64|armv8*) pyfile_m=aarch64 ;; esac
    # (No word splitting: zsh does not split unquoted variables.)
    pyfile_have=
    case $pyfile_carried in *" x86_64:"*) pyfile_have=" x86_64" ;; esac
    case $pyfile_carried in *" aarch64:"*) pyfile_have="$pyfile_have aarch64" ;; esac
    pyfile_rest=
    case $pyfile_carried in *" $pyfile_m:"*)
        pyfile_rest=${pyfile_carried#*" $pyfile_m:"}
        pyfile_rest=${pyfile_rest%%" "*} ;;
    esac
    case $pyfile_m in
        x86_64) pyfile_ld=/lib64/ld-linux-x86-64.so.2 ;;
        aarch64) pyfile_ld=/lib/ld-linux-aarch64.so.1 ;;
        *) pyfile_ld= ;;
    esac
    if [ "$pyfile_os" != Linux ] || [ -z "$pyfile_rest" ] || [ ! -e "$pyfile_ld" ]; then
        pyfile_why="this machine is $pyfile_os $pyfile_m"
        [ -n "$pyfile_rest" ] && [ "$pyfile_os" = Linux ] && pyfile_why="this machine has no glibc ($pyfile_ld is missing: musl?)"
        echo "pyfile: this file needs Linux with glibc 2.28 or newer on${pyfile_have:- x86_64 or aarch64}; $pyfile_why (or set PYFILE_PYTHON to a Python 3.9+ with llama-cpp-python)" >&2
        return 1
    fi
    pyfile_any=${pyfile_carried#*" any:"}
    pyfile_any=${pyfile_any%%" "*}
    pyfile_anysha=${pyfile_any##*:}
    pyfile_sha=${pyfile_rest##*:}
    # Named by both parts' digests (16 hex digits of the shared one).
    pyfile_name=cpython-$pyfile_m-$pyfile_sha-${pyfile_anysha%"${pyfile_anysha#????????????????}"}
    pyfile_uid=$(id -u 2>/dev/null) || pyfile_uid=0
    pyfile_fallback=${TMPDIR:-/tmp}/pyfile-$pyfile_uid
    if [ -n "${PYFILE_CACHE_DIR:-}" ]; then
        pyfile_base=$PYFILE_CACHE_DIR
    elif [ -n "${XDG_CACHE_HOME:-}" ]; then
        pyfile_base=$XDG_CACHE_HOME/pyfile
    elif [ -n "${HOME:-}" ]; then
        pyfile_base=$HOME/.cache/pyfile
    else
        pyfile_base=$pyfile_fallback
    fi
    for pyfile_b in "$pyfile_base" "$pyfile_fallback"; do
        if [ -x "$pyfile_b/python/$pyfile_name/bin/python3" ]; then
            exec "$pyfile_b/python/$pyfile_name/bin/python3" -I -c "$pyfile_boot" "$pyfile_self" "$@"
        fi
        [ -z "${PYFILE_CACHE_DIR:-}" ] || break
    done
    for pyfile_b in "$pyfile_base" "$pyfile_fallback"; do
        pyfile_unpack "$pyfile_b/python"
        case $? in
            0) exec "$pyfile_b/python/$pyfile_name/bin/python3" -I -c "$pyfile_boot" "$pyfile_self" "$@" ;;
            2) return 1 ;;
        esac
        if [ -n "${PYFILE_CACHE_DIR:-}" ]; then
            echo "pyfile: cannot unpack the interpreter into PYFILE_CACHE_DIR=$PYFILE_CACHE_DIR (not writable, full, or mounted noexec); point it at a writable folder that allows running programs" >&2
            return 1
        fi
    done
    echo "pyfile: cannot unpack the interpreter into $pyfile_base or $pyfile_fallback (not writable, full, or mounted noexec); set PYFILE_CACHE_DIR to a writable folder that allows running programs" >&2
    return 1
}
# Unpack this machine's interpreter into $1/$pyfile_name. Returns 0 when it is there, 1
# when this place cannot hold it (try another), 2 after saying why it cannot run at all.
pyfile_unpack() {
    mkdir -p "$1" 2>/dev/null && [ -w "$1" ] || return 1
    pyfile_tmp=$(mktemp -d "$1/.unpack-XXXXXX" 2>/dev/null) || return 1
    pyfile_locked=
    if command -v flock >/dev/null 2>&1 && { exec 9>"$1/.$pyfile_name.lock"; } 2>/dev/null; then
        if flock 9 2>/dev/null; then pyfile_locked=1; else exec 9>&-; fi
        if [ -x "$1/$pyfile_name/bin/python3" ]; then  # another run unpacked it meanwhile
            [ -z "$pyfile_locked" ] || exec 9>&-
            rm -rf "$pyfile_tmp"
            return 0
        fi
    fi
    for pyfile_part in "$pyfile_rest" "$pyfile_any"; do
        pyfile_off=${pyfile_part%%:*}
        pyfile_size=${pyfile_part#*:}
        pyfile_size=${pyfile_size%%:*}
        # Copy the member out (dd seeks to it: it starts at a multiple of 64 KiB), check it.
        if ! dd if="$pyfile_self" bs=65536 skip=$((pyfile_off / 65536)) count=$(((pyfile_size + 65535) / 65536)) 2>/dev/null |
                head -c "$pyfile_size" >"$pyfile_tmp/part.tar.gz"; then
            rm -rf "$pyfile_tmp"
            [ -z "$pyfile_locked" ] || exec 9>&-
            return 1
        fi
        pyfile_sum=$(sha256sum <"$pyfile_tmp/part.tar.gz" 2>/dev/null) || pyfile_sum=
        if [ "${pyfile_sum%% *}" != "${pyfile_part##*:}" ]; then
            rm -rf "$pyfile_tmp"
            [ -z "$pyfile_locked" ] || exec 9>&-
            if [ -z "$pyfile_sum" ]; then
                echo "pyfile: this file needs sha256sum (coreutils or busybox) to unpack its interpreter once" >&2
            else
                echo "pyfile: $pyfile_self: damaged or truncated pyfile (its interpreter for $pyfile_m fails its SHA-256 check); download the file again" >&2
            fi
            return 2
        fi
        if ! (cd "$pyfile_tmp" && gzip -dc part.tar.gz | tar -xf - && rm -f part.tar.gz) 2>/dev/null; then
            rm -rf "$pyfile_tmp"
            [ -z "$pyfile_locked" ] || exec 9>&-
            return 1
        fi
    done
    # Starting it proves the place allows running programs and the C library suffices; the
    # interpreter then renames its folder into place (losing that race is fine).
    pyfile_err=$("$pyfile_tmp/bin/python3" -I -S -c "
import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
except OSError:
    if not os.path.isdir(os.path.join(sys.argv[2], \"bin\")):
        raise
" "$pyfile_tmp" "$1/$pyfile_name" 2>&1)
    pyfile_rc=$?
    rm -rf "$pyfile_tmp"
    [ -z "$pyfile_locked" ] || exec 9>&-
    [ "$pyfile_rc" -eq 0 ] && return 0
    case $pyfile_err in
        *GLIBC_*)
            echo "pyfile: this file needs glibc 2.28 or newer; this machine has $(getconf GNU_LIBC_VERSION 2>/dev/null || echo an older one)" >&2
            return 2 ;;
        *ermission*|*"not permitted"*|*"Exec format"*) return 1 ;;
    esac
    echo "pyfile: the carried interpreter does not start here: $(printf '%s' "$pyfile_err" | tail -n 1)" >&2
    return 2
}
pyfile_main "$@"
pyfile_rc=$?
# Reached only when Python could not be started. Stop here, before any shell reads the zip
# bytes below: 'return' ends a sourced read, 'exit' everything else.
return "$pyfile_rc" 2>/dev/null
exit "$pyfile_rc"

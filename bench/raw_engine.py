"""The anchor: plain llama-cpp-python on the raw GGUF, no pyfile involved.

    python bench/raw_engine.py MODEL.gguf VARIANT PROMPT N_PREDICT [--chat]

VARIANT names the CPU variant to load (engines built with loadable variants need one
loaded by hand; 'builtin' for engines that have their CPU backend linked in). Prints only
the generated text, like ``./model.pyfile -p PROMPT -n N --temp 0``.
"""

import ctypes
import glob
import os
import sys

model, variant, prompt, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import llama_cpp  # noqa: E402

if variant != "builtin":
    pkg = os.path.dirname(llama_cpp.__file__)
    (path,) = glob.glob(os.path.join(pkg, "..", "bin", f"libggml-cpu-{variant}.so"))
    ggml = ctypes.CDLL("libggml.so.0")
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    assert ggml.ggml_backend_load(path.encode())
llm = llama_cpp.Llama(model_path=model, n_ctx=4096, n_batch=512, verbose="-v" in sys.argv)
if "--chat" in sys.argv:
    out = llm.create_chat_completion([{"role": "user", "content": prompt}], temperature=0,
                                     max_tokens=n)
    sys.stdout.write(out["choices"][0]["message"]["content"] + "\n")
else:
    for chunk in llm.create_completion(prompt, max_tokens=n, temperature=0, stream=True):
        sys.stdout.write(chunk["choices"][0]["text"])
sys.stdout.flush()

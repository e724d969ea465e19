"""Split a model across machines with llama.cpp's own RPC backend (ggml-rpc).

Workers run ggml's RPC server on their local backend (``--rpc-worker``, :mod:`.worker`); the
main process adds them as devices (``--rpc host:port,...``, :mod:`.client`) and llama.cpp
places layers on them. ggml's RPC client aborts the process when a worker cannot be reached
or fails its handshake, so every worker is checked from Python first (:mod:`.protocol`) and
the run itself happens in a supervised child (:mod:`.supervisor`).
"""

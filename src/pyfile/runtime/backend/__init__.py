"""Where the model runs: the hardware found, the CPU variant and GPU backend chosen, and the
engine (llama-cpp-python) loaded with the weights mapped in place from the file."""

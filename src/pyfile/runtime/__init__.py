"""The pyfile run-time: what travels inside every pyfile.

Standard library only (llama-cpp-python is imported lazily, when a model is loaded), so
that ``inspect``/``verify`` and a pyfile's start stay cheap. Build-time code in
``pyfile.*`` imports from here, never the reverse.
"""

"""The terminal run modes: one prompt (``-p``) and the interactive chat (``--chat``)."""

"""Server mode: the HTTP app, one task layer between the routes and the batching scheduler,
and the wire formats of each API under ``api/``."""

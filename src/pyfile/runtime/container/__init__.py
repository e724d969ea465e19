"""The file itself: the zip structure and manifest, ``.args``, the content-addressed cache of
carried native files, the runtime bundle, and the guard that notices the file change."""

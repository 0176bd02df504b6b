"""``delib view``: the archive as web pages on 127.0.0.1 (``server``), the pages in ``pages``."""

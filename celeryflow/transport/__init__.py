"""The embedded broker: ``celeryflow+sqlite://``, a kombu transport on the stdlib
``sqlite3`` (``kombu_sqlite.py``; notes in ``TRANSPORT.md``). It imports nothing of
celeryflow, and nothing of celeryflow imports it but the package's ``__init__``,
which registers the URL scheme."""

__all__: list[str] = []

"""annvq REST service: FastAPI over the annvq library, with a write-ahead log per index.

Start it with ``python -m server`` (``--help`` lists the flags), ``annvq serve``, or from Python with
:func:`server.main.run`; ``server.app:create_app`` is the ASGI factory.
"""

"""annvq REST service: FastAPI over the annvq library, with a write-ahead log per index.

The code lives in the repository's ``server/`` folder and installs as ``annvq_server``. Start it with
``python -m annvq_server`` (``--help`` lists the flags), ``annvq serve``, or from Python with
:func:`annvq_server.main.run`; ``annvq_server.app:create_app`` is the ASGI factory.
"""

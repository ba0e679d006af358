"""``python -m server``: start the service with flags, ``ANNVQ_*`` environment variables and defaults."""
from __future__ import annotations

import sys

from pydantic import ValidationError

from .config import ServerConfig, build_parser
from .main import serve


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        config = ServerConfig.from_env(**vars(args))
    except ValidationError as exc:
        sys.exit(f"invalid settings:\n{exc}")
    serve(config)


if __name__ == "__main__":
    main()

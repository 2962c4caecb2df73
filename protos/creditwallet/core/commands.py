"""The command-line shape every credit-wallet command shares: ``--help`` and ``--version``.

Why here: each process (CLI, server, gateway, migrate) is configured from the environment, so
its ``--help`` must say which variables it reads; and ``--help`` must work before any of them
is set, which is why the arguments are parsed before the configuration is read.
"""

from __future__ import annotations

import argparse

import creditwallet


def parser(prog: str, description: str, environment: str = "") -> argparse.ArgumentParser:
    """An argument parser with ``--version``; ``environment`` is shown as the help's epilog."""
    result = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=environment or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    result.add_argument(
        "--version", action="version", version=f"%(prog)s {creditwallet.__version__}"
    )
    return result

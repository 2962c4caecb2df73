"""What every credit-wallet process shares, and nothing else.

The client (and the CLI), the server and the gateway each import this; none of them imports
another's package for these:

- ``limits``: every bound of every process, units last in the names, relations checked at
  import;
- ``units``: credits <-> micro-credits, exactly;
- ``settings``: the masked ``Secret`` type and ``ConfigError``;
- ``logs``: the one logging set-up of the processes.
"""

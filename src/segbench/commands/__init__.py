"""One module per ``segbench`` command: read the composed config, call library functions, print.

Each module has ``run(cfg) -> int | dict`` (the exit status, or the result; ``None``/a dict means 0) and
holds no logic of its own. Only :mod:`segbench.cli` imports them; nothing in the library does.
"""

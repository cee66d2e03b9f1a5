"""segbench's Hydra configs, shipped inside the package and found as ``pkg://segbench.configs``.

The repository's top-level ``configs/`` is a symlink to this folder, so there is one copy.
"""

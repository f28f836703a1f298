"""The ``gpuguard`` command: the top floor of the package layering (see gpuguard_cli/main.py)."""

"""gpurun's laptop side: CLI, hosts, sync, launch, follow, pull, run history. Nothing heavy here."""

__version__ = "0.1.0"

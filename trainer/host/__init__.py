"""What runs on the host before and around training: start, wrap, state, follow, stop, GPUs, torchrun, Slurm.

Standard library only at module level: these run before the training stack is known to exist.
"""

"""How a version is served: configuration, runtimes, the batcher, the data plane, HTTP front doors.

Nothing here imports ``training``; torch is imported only by the TorchScript runtime.
"""

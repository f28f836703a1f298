"""The BPF C programs (packaged as data: the agent compiles them with BCC at start)."""

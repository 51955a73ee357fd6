"""Fault-injection tests: real processes, real faults, Jepsen-style counts."""

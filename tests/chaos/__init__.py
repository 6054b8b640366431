"""Fault-injection tests: a real pool under SIGKILLs, a Redis restart and a rolling reload."""

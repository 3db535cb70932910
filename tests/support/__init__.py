"""Helpers for tests that run real servers (unbound, SafeGate) on loopback.

`unbound` starts Debian's unbound as an authoritative-only upstream with known test data;
`procs` allocates ports, writes gateway.yaml and runs SafeGate as a real process.
"""

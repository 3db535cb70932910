"""SafeGate: a DNS and HTTP content-filtering gateway that protects children online."""

__version__ = "0.1.0"

"""The running process: wiring, reloads, workers, HTTP listeners, metrics."""

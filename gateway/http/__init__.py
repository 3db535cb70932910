"""HTTP listener plumbing shared by the gateway and the proxy process: per-connection limits
(guard.py) and the scrape/health endpoints (health.py). Imports only config, util, errors."""

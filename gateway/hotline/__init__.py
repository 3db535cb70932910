"""Harmful-content and mistake reports: validated, stored in SQLite, forwarded via an outbox."""

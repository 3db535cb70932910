"""Small helpers shared by every part: names, SQLite, bounded file reads, the outbox."""

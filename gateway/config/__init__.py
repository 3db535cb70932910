"""What gateway.yaml says: parsing, limits and upstream specs (no DNS, no runtime)."""

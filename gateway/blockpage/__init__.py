"""The block page users see when a name is blocked."""

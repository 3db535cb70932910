"""Policy, pure: who is who, what is blocked, and when."""

"""sipcore."""

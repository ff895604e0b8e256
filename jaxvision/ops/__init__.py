"""Array operations shared by data, models and metrics (host-side numpy unless stated)."""

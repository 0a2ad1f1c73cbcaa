"""Examples of extending Sluice."""

"""Internal helpers shared by every public entry point."""

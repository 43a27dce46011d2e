"""Developer tooling: the embedded local stack and the demo driver (not shipped in any image)."""

"""Developer tooling: the demo driver and serving a registered model by hand (not shipped in any image)."""

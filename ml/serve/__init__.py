"""The inference API: the registered model behind FastAPI, with probes, Prometheus metrics and fast scoring."""

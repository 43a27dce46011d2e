"""Exactly what the ML-stage and inference-API images run: the stages, the inference service, the release stage.

One module per stage, each a CLI over plain functions. Nothing here imports Airflow, the Airflow side of the
project or the embedded stand-ins; stages talk to the orchestrator only through their arguments, environment
and the JSON result they write for the pod's XCom sidecar (names and codes in ``contract``).
"""

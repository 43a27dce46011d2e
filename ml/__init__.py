"""Code that runs inside the pipeline's pods: one module per stage, each a CLI over plain functions.

Nothing in this package imports Airflow; stages talk to the orchestrator only through their arguments,
environment and the JSON result they write for the pod's XCom sidecar.
"""

"""The embedded default's stand-ins for cluster machinery: what runs on a bare machine in place of the cluster.

Each speaks the interface of the part it replaces, so the code that uses it is the same in both worlds:

- ``bin/helm`` (``standins.helm``): a ``helm``-compatible command (``history``, ``get values|manifest``,
  ``upgrade --install``, ``rollback``) over a release history kept in files (``release_store``), rendering the
  chart with Helm's own Go SDK. The local pod runtime puts ``bin/`` first on a pod's ``PATH``, so the release
  stage (``python -m ml.release``) runs unchanged.
- ``rollouts``: the Argo Rollouts controller for those releases: the stable and new inference API on loopback
  behind a weighted router, traffic replayed from the test split, the chart's AnalysisTemplate queries run verbatim
  on a real Prometheus (Debian's) that scrapes the APIs with the cluster's labels and loads the chart's rules.
  Started by the ``helm`` stand-in; ``python -m standins.rollouts stop`` ends it.
- ``mlflow_server``: the MLflow tracking server on loopback (SQLite, local artifacts) behind MLflow's basic-auth
  app as compose runs it, with accounts generated once for the pipeline and a reader; ``exec`` hands a command
  one in its environment.

No production image copies this folder; nothing under ``ml/`` imports it.
"""

from pathlib import Path

#: docker-compose.yaml, whose settings the embedded MLflow and Airflow take over.
COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yaml"

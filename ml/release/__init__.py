"""Releasing the inference API: Helm upgrades and rollbacks of its chart, and a local stand-in for the cluster.

``python -m ml.release deploy|rollback`` runs in a pod with Helm (the ``kubernetes`` target) or, under the local
pod runtime, against a release history kept in files and a local Argo Rollouts stand-in (``local_rollouts``) that
runs the stable and new inference API on loopback behind a weighted router.
"""

#: Phases of a rollout, as Argo Rollouts names them (and the verdicts the pipeline acts on).
HEALTHY, DEGRADED, PROGRESSING, PAUSED, SUPERSEDED = (
    "Healthy",
    "Degraded",
    "Progressing",
    "Paused",
    "Superseded",
)

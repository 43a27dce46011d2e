"""Releasing the inference API: a Helm upgrade of its chart with a model version, or a rollback.

``python -m ml.release deploy|rollback`` runs ``helm``: in the cluster, the binary of the ML stage image with the
pod's service account; in the local pod runtime, the ``helm``-compatible stand-in (``standins/bin/helm``) that
keeps the release on this machine. The stage is the same command in both.
"""

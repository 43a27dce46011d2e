"""Terraform drift: the check that runs in the Terraform pod (``check``) and the report built from it (``report``).

``check`` uses the standard library only, so the Terraform image needs nothing but Python 3 next to the
``terraform`` binary; ``report`` runs on the Airflow worker.
"""

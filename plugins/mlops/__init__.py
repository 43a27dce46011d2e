"""How Airflow runs the ML stages: the platform settings and the pod operator with its two runtimes."""

-- The tuning studies' database (Optuna's tables), beside Airflow's: run once, when the volume is new.
CREATE DATABASE optuna OWNER airflow;

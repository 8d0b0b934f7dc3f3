-- One Postgres, two databases: Prefect's and MLflow's (the default one, gvr, stays empty).
CREATE DATABASE prefect;
CREATE DATABASE mlflow;

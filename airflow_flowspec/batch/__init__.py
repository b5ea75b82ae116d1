"""AWS Batch pieces that need no Airflow: assembling a step's job and following it. A Batch
container and a notebook import them without Airflow installed."""

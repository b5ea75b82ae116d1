"""Airflow triggers: what a deferred step waits on in the triggerer, without holding a worker slot.
Imported by the operators and by the triggerer (by class path), never by the step runtime."""

"""Airflow operators that run flow steps. Imported by the translator, never by the step runtime."""

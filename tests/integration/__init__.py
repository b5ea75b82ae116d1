"""Tests against a real, running Airflow (see conftest.py); a package so its conftest is not ``conftest``."""

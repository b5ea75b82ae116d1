"""``python -m airflow_flowspec.runtime``: see :mod:`airflow_flowspec.runtime.process`."""

import sys

from airflow_flowspec.runtime.process import main

if __name__ == "__main__":
    sys.exit(main())

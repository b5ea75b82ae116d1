"""Provider entry point: lets Airflow list the package and its ``[flowspec]`` configuration."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    from airflow_flowspec import __version__
    from airflow_flowspec.config import DEFAULTS, DESCRIPTIONS

    return {
        "package-name": "airflow-flowspec",
        "name": "Flowspec",
        "description": "Metaflow-style flows (FlowSpec, @step, self.next) run as Airflow DAGs, "
        "with artifacts stored in S3 or a local folder.",
        "versions": [__version__],
        "config": {
            "flowspec": {
                "description": "Where flow artifacts live and how steps run.",
                "options": {
                    name: {
                        "description": DESCRIPTIONS[name],
                        "version_added": "0.1.0",  # when these options appeared, not today's version
                        "type": "integer" if DEFAULTS[name].isdigit() else "string",
                        "example": None,
                        "default": DEFAULTS[name],
                    }
                    for name in DEFAULTS
                },
            }
        },
    }

"""The AWS Batch pieces that need no Airflow: what a step's job is made of, and following it.

A Batch container, a notebook and the Airflow operator all assemble the same job from the same
flow file, and the operator, the deferrable trigger and ``python flow.py run --with batch`` follow a
job the same way, so this folder imports neither Airflow nor boto3; every AWS call goes through
``client.py``, over the boto3 clients the caller passes in.

Not named ``batch``: importing a subpackage sets it as an attribute of its parent, and
``airflow_flowspec.batch`` is the ``@batch`` decorator that flow files import.
"""

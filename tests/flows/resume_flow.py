"""A flow whose middle step fails until a marker file exists: the resume test clears and re-runs it.

``start`` appends one line per execution to the ``ledger`` file, so the test can tell whether a
resumed run executed it again, and stores a token that only that execution could have produced.
"""

import os
import uuid

from airflow_flowspec import FlowSpec, Parameter, step


class ResumeFlow(FlowSpec):
    ledger = Parameter("ledger", help="file that start appends a line to every time it runs")
    marker = Parameter("marker", help="middle fails until this file exists")

    @step
    def start(self):
        self.token = uuid.uuid4().hex  # different on every execution of start
        self.numbers = [3, 4, 5]
        with open(self.ledger, "a", encoding="utf-8") as ledger:
            ledger.write(self.token + "\n")
        self.next(self.middle)

    @step
    def middle(self):
        if not os.path.exists(self.marker):
            raise RuntimeError(f"marker file {self.marker} is missing")
        self.total = sum(self.numbers)
        self.next(self.end)

    @step
    def end(self):
        self.summary = f"{self.token}:{self.total}"


if __name__ == "__main__":
    ResumeFlow()

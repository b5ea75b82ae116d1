from airflow_flowspec import FlowSpec, JSONType, Parameter, step


class RequiredJsonFlow(FlowSpec):
    """A required parameter without a default and a JSON parameter whose value may be a string."""

    payload = Parameter("payload", type=JSONType, default='{"a": 1}')
    outcome = Parameter("outcome", required=True)

    @step
    def start(self):
        print(f"payload is {self.payload!r}")
        if self.outcome == "fail":
            raise RuntimeError("asked to fail")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RequiredJsonFlow()

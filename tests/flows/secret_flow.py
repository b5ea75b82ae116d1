import os

from airflow_flowspec import FlowSpec, Parameter, catch, step


class SecretFlow(FlowSpec):
    """Uses an API token without ever showing it."""

    token = Parameter("token", secret=True, default=lambda: os.environ["SECRET_FLOW_TOKEN"])
    region = Parameter("region", default="eu-west-1")

    @step
    def start(self):
        print(f"calling the API in {self.region} with {self.token}")
        self.headers = {"Authorization": f"Bearer {self.token}"}  # made from the secret
        self.token_length = len(self.token)
        self.next(self.call)

    @catch(var="failure")
    @step
    def call(self):
        if self.token:
            raise RuntimeError(f"the API refused {self.token}")
        self.next(self.end)

    @step
    def end(self):
        print(f"end sees {self.headers}")
        self.same = self.token


if __name__ == "__main__":
    SecretFlow()

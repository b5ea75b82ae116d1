import getpass

from airflow_flowspec import FlowSpec, Parameter, step


class MetaflowParametersFlow(FlowSpec):
    """Parameters written as Metaflow has them: a separator, and a default computed from its context."""

    names = Parameter("names", default="ana,ben", separator=",")
    owner = Parameter("owner", default=lambda ctx: f"{ctx.flow_name}/{ctx.parameter_name}/{ctx.user_name}")
    plain = Parameter("plain", default=lambda: "no context")

    @step
    def start(self):
        self.seen = (self.names, self.owner, self.plain, getpass.getuser())
        self.next(self.end)

    @step
    def end(self):
        pass

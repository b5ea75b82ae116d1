from airflow_flowspec import FlowSpec, current, project, step

PROJECT_FIELDS = ("project_name", "branch_name", "project_flow_name", "is_user_branch", "is_production")


@project(name="demand_forecast")
class ProjectFlow(FlowSpec):
    """A flow of a project: each run belongs to a branch of it."""

    @step
    def start(self):
        self.seen = {name: getattr(current, name) for name in PROJECT_FIELDS}
        self.namespace_seen = current.namespace
        self.pathspec_seen = current.pathspec
        self.next(self.end)

    @step
    def end(self):
        print("branch", current.branch_name)


if __name__ == "__main__":
    ProjectFlow()

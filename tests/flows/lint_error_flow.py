from airflow_flowspec import FlowSpec, step


class LintErrorFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.helper)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    LintErrorFlow()

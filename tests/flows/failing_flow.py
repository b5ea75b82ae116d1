from airflow_flowspec import FlowSpec, step


class FailingFlow(FlowSpec):
    @step
    def start(self):
        self.prepared = "kept for a resume"
        self.next(self.crunch)

    @step
    def crunch(self):
        print("crunching 0 rows")
        raise ZeroDivisionError("the data had no rows to average")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    FailingFlow()

from airflow_flowspec import FlowSpec, step


class MergeConflictFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.model = "model-a"
        self.next(self.join)

    @step
    def b(self):
        self.model = "model-b"
        self.next(self.join)

    @step
    def join(self, inputs):
        self.merge_artifacts(inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    MergeConflictFlow()

from airflow_flowspec import FlowSpec, step


class ForeachFlow(FlowSpec):
    @step
    def start(self):
        self.letters = ["a", "b", "c", "d"]
        self.big = b"x" * (2 * 1024 * 1024)  # carried through, never read after start
        self.next(self.upper, foreach="letters")

    @step
    def upper(self):
        self.result = f"{self.index}:{self.input.upper()}"
        self.next(self.join)

    @step
    def join(self, inputs):
        self.results = [i.result for i in inputs]
        self.merge_artifacts(inputs, include=["letters"])
        self.next(self.end)

    @step
    def end(self):
        self.count = len(self.results)


if __name__ == "__main__":
    ForeachFlow()

from airflow_flowspec import FlowSpec, IncludeFile, Parameter, step


class IncludeFileFlow(FlowSpec):
    notes = IncludeFile("notes", help="a text file")
    blob = IncludeFile("blob", is_text=False, help="a binary file")
    threshold = Parameter("threshold", type=int, required=True)

    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        self.notes_seen = self.notes
        self.blob_seen = self.blob


if __name__ == "__main__":
    IncludeFileFlow()

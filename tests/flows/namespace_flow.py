from airflow_flowspec import Flow, FlowSpec, current, get_namespace, step


class NamespaceFlow(FlowSpec):
    """Prints what a step's client sees: its namespace and whether it finds the flow's runs."""

    @step
    def start(self):
        print(f"client namespace: {get_namespace()!r}")
        print(f"current.namespace: {current.namespace}")
        print(f"is_production: {current.is_production}")
        print(f"sees a run: {Flow('NamespaceFlow').latest_run is not None}")
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    NamespaceFlow()

"""Feature pipeline: build per-customer churn features, fully or incrementally.

Demonstrates:
  * a switch, ``self.next({...}, condition="mode_choice")``: only the chosen arm runs, the other
    is shown as skipped in Airflow, and both arms meet again at a normal step (``clean``);
  * a static branch (numeric and text features computed in parallel) closed by a join step that
    reads each branch by name: ``inputs.numeric_features``, ``inputs.text_features``;
  * ``@catch``: the full rebuild meets a legacy support ticket without text, the text step fails,
    and the pipeline still publishes the numeric features (and says what went wrong);
  * ``@environment``: environment variables set only while one step runs.

Run it:
    python dags_examples/feature_pipeline.py run                       # full rebuild
    python dags_examples/feature_pipeline.py run --mode incremental    # last 3 days only
    python dags_examples/feature_pipeline.py show
"""

import os
import random
from datetime import date, timedelta

from airflow_flowspec import FlowSpec, Parameter, catch, environment, step

SNAPSHOT_DAY = date(2024, 6, 30)  # a fixed snapshot keeps the example reproducible
INCREMENTAL_DAYS = 3
NEGATIVE_WORDS = {"refund", "broken", "cancel", "late", "missing", "worst"}


def load_raw_events(seed=7):
    """Stand-in for reading the orders and support-ticket tables of the last 30 days."""
    rng = random.Random(seed)
    customers = [f"c{n:03d}" for n in range(1, 21)]
    orders = [
        {
            "order_id": n,
            "customer": rng.choice(customers),
            "day": SNAPSHOT_DAY - timedelta(days=rng.randrange(30)),
            "amount": round(rng.uniform(5, 120), 2),
        }
        for n in range(300)
    ]
    orders += orders[:5]  # the export duplicates a few rows, and refunds come as negative orders
    orders.append({"order_id": 999, "customer": "c001", "day": SNAPSHOT_DAY, "amount": -15.0})
    phrases = [
        "where is my parcel, it is late",
        "thanks, great service",
        "item arrived broken, refund please",
        "how do I change my address",
        "worst experience, I want to cancel",
    ]
    tickets = [
        {
            "customer": rng.choice(customers),
            "day": SNAPSHOT_DAY - timedelta(days=rng.randrange(30)),
            "text": rng.choice(phrases),
        }
        for _ in range(40)
    ]
    # Imported from the old CRM, which did not keep the message body.
    tickets.append({"customer": "c007", "day": SNAPSHOT_DAY - timedelta(days=25), "text": None})
    return orders, tickets


class FeaturePipelineFlow(FlowSpec):
    """Per-customer features for the churn model: order statistics and support-ticket sentiment."""

    mode = Parameter(
        "mode", default="full", help="'full' rebuilds from all history, 'incremental' does the last 3 days"
    )

    @step
    def start(self):
        self.mode_choice = self.mode.strip().lower()
        self.raw_orders, self.raw_tickets = load_raw_events()
        print(f"Mode {self.mode_choice!r}: {len(self.raw_orders)} orders, {len(self.raw_tickets)} tickets")
        self.next({"full": self.full_rebuild, "incremental": self.incremental}, condition="mode_choice")

    @step
    def full_rebuild(self):
        self.since = min(o["day"] for o in self.raw_orders)
        self.orders, self.tickets = self.raw_orders, self.raw_tickets
        self.next(self.clean)

    @step
    def incremental(self):
        self.since = SNAPSHOT_DAY - timedelta(days=INCREMENTAL_DAYS - 1)
        self.orders = [o for o in self.raw_orders if o["day"] >= self.since]
        self.tickets = [t for t in self.raw_tickets if t["day"] >= self.since]
        self.next(self.clean)

    @step
    def clean(self):
        unique = {o["order_id"]: o for o in self.orders if o["amount"] > 0}
        dropped = len(self.orders) - len(unique)
        self.orders = sorted(unique.values(), key=lambda o: o["order_id"])
        print(f"Since {self.since}: {len(self.orders)} orders after dropping {dropped} duplicates/refunds")
        self.next(self.numeric_features, self.text_features)

    @step
    def numeric_features(self):
        self.numeric = {}
        for order in self.orders:
            new_row = {"orders": 0, "spend": 0.0, "last": order["day"]}
            row = self.numeric.setdefault(order["customer"], new_row)
            row["orders"] += 1
            row["spend"] = round(row["spend"] + order["amount"], 2)
            row["last"] = max(row["last"], order["day"])
        for row in self.numeric.values():
            row["avg_order_value"] = round(row["spend"] / row["orders"], 2)
            row["days_since_last_order"] = (SNAPSHOT_DAY - row.pop("last")).days
        self.next(self.combine)

    @catch(var="text_error", print_exception=False)
    @step
    def text_features(self):
        self.text = {}
        for ticket in self.tickets:
            words = set(ticket["text"].lower().replace(",", " ").split())
            row = self.text.setdefault(ticket["customer"], {"tickets": 0, "negative_tickets": 0})
            row["tickets"] += 1
            row["negative_tickets"] += bool(words & NEGATIVE_WORDS)
        self.next(self.combine)

    @step
    def combine(self, inputs):
        numeric = inputs.numeric_features.numeric
        self.text_error = inputs.text_features.text_error  # None unless @catch caught a failure
        if self.text_error:
            print(f"WARNING: text features failed ({self.text_error.exception}); using numeric features only")
            text = {}
        else:
            text = inputs.text_features.text
        no_orders = {"orders": 0, "spend": 0.0, "avg_order_value": 0.0, "days_since_last_order": None}
        no_tickets = {"tickets": 0, "negative_tickets": 0}
        self.features = {
            customer: {**numeric.get(customer, no_orders), **text.get(customer, no_tickets)}
            for customer in sorted(set(numeric) | set(text))
        }
        self.merge_artifacts(inputs, include=["mode_choice", "since"])
        self.next(self.end)

    @environment(vars={"FEATURE_TABLE": "analytics.churn_features_v2"})
    @step
    def end(self):
        self.published_to = f"{os.environ['FEATURE_TABLE']} ({self.mode_choice}, since {self.since})"
        print(f"Wrote features of {len(self.features)} customers to {self.published_to}")
        for customer, row in list(self.features.items())[:3]:
            print(f"  {customer}: {row}")


if __name__ == "__main__":
    FeaturePipelineFlow()

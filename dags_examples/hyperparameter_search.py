"""Hyperparameter search: train one model per learning rate in parallel, keep the best.

Demonstrates:
  * a JSON parameter (a list of learning rates) and an int parameter;
  * ``foreach``: one ``train`` task per learning rate (an Airflow mapped task), ``self.input``;
  * a model class defined in this file, pickled in one task and loaded in another;
  * a join step that compares the branches, and ``merge_artifacts`` for what they share;
  * ``@retry`` and ``@resources`` (resources are used on AWS Batch; recorded only when local).

Run it:
    python dags_examples/hyperparameter_search.py run
    python dags_examples/hyperparameter_search.py run --learning_rates "[0.01, 0.1]" --epochs 200
    python dags_examples/hyperparameter_search.py show
"""

import math
import random

from airflow_flowspec import FlowSpec, JSONType, Parameter, resources, retry, step


class LinearModel:
    """y = weight * x + bias, fitted by full-batch gradient descent on the mean squared error."""

    def __init__(self, learning_rate):
        self.learning_rate = learning_rate
        self.weight = 0.0
        self.bias = 0.0

    def predict(self, x):
        return self.weight * x + self.bias

    def fit(self, points, epochs):
        n = len(points)
        for _ in range(epochs):
            errors = [(self.predict(x) - y, x) for x, y in points]
            self.weight -= self.learning_rate * 2 * sum(e * x for e, x in errors) / n
            self.bias -= self.learning_rate * 2 * sum(e for e, _ in errors) / n
            if not (math.isfinite(self.weight) and math.isfinite(self.bias)):
                break  # diverged: the learning rate is too large
        return self

    def mse(self, points):
        loss = sum((self.predict(x) - y) * (self.predict(x) - y) for x, y in points) / len(points)
        return loss if math.isfinite(loss) else math.inf

    def __repr__(self):
        return f"LinearModel(weight={self.weight:.3f}, bias={self.bias:.3f}, lr={self.learning_rate:g})"


class HyperparameterSearchFlow(FlowSpec):
    """Fit a linear model for each learning rate and keep the one with the lowest validation loss."""

    learning_rates = Parameter(
        "learning_rates", default=[0.001, 0.01, 0.05, 0.2], type=JSONType, help="learning rates to try"
    )
    epochs = Parameter("epochs", default=100, help="gradient descent epochs per model")
    seed = Parameter("seed", default=42, help="random seed of the synthetic dataset")

    @step
    def start(self):
        # Synthetic data: y = 3x + 2 plus noise, split 80/20 into train and validation.
        rng = random.Random(self.seed)
        self.true_weight, self.true_bias = 3.0, 2.0
        points = []
        for _ in range(200):
            x = rng.uniform(0, 2)
            points.append((x, self.true_weight * x + self.true_bias + rng.gauss(0, 0.3)))
        self.train_points, self.valid_points = points[:160], points[160:]
        print(f"{len(self.train_points)} training and {len(self.valid_points)} validation points")
        print(f"Trying learning rates {self.learning_rates} for {self.epochs} epochs each")
        self.next(self.train, foreach="learning_rates")

    @resources(cpu=1, memory=2048)
    @retry(times=2, minutes_between_retries=1)
    @step
    def train(self):
        self.learning_rate = float(self.input)
        self.model = LinearModel(self.learning_rate).fit(self.train_points, self.epochs)
        self.validation_loss = self.model.mse(self.valid_points)
        print(f"lr={self.learning_rate:g}: {self.model}, validation MSE {self.validation_loss:.4f}")
        self.next(self.pick_best)

    @step
    def pick_best(self, inputs):
        self.leaderboard = sorted(
            ({"learning_rate": i.learning_rate, "validation_loss": i.validation_loss} for i in inputs),
            key=lambda row: row["validation_loss"],
        )
        best = min(inputs, key=lambda i: i.validation_loss)
        self.best_model = best.model
        self.best_learning_rate = best.learning_rate
        self.best_loss = best.validation_loss
        self.merge_artifacts(inputs, include=["valid_points", "true_weight", "true_bias"])
        self.next(self.end)

    @step
    def end(self):
        print("Leaderboard:")
        for rank, row in enumerate(self.leaderboard, 1):
            print(f"  {rank}. lr={row['learning_rate']:<8g} validation MSE {row['validation_loss']:.4f}")
        model = self.best_model
        print(f"Best: lr={self.best_learning_rate:g} -> {model}")
        print(f"True relation: weight={self.true_weight}, bias={self.true_bias}")
        truth = self.true_weight * 1.5 + self.true_bias
        print(f"Prediction at x=1.5: {model.predict(1.5):.3f} (truth {truth})")


if __name__ == "__main__":
    HyperparameterSearchFlow()

"""A non-text graph of real scikit-learn models: a digits cascade with ``input: [Embedding]``.

``sklearn.datasets.load_digits`` ships with scikit-learn (offline). Three models behind the
generic ``SklearnClassifier``: a shallow decision tree first (0.75 accuracy on the first 300
held-out rows), and rows it is unsure of (~40 %) go to an ensemble of logistic regression and
k-nearest neighbours (mean of the distributions): 0.92 together.
"""

from __future__ import annotations

import pathlib

import pyarrow as pa

#: Rows used for training; the rest are held out for the tests.
TRAIN_ROWS = 1000

_GRAPH = """\
name: digits
description: Handwritten digits (8x8 pixels as a 64-value embedding); cheap model first, ensemble when unsure.
input: [Embedding]
timeout_s: 30
flow:
  kind: chain
  name: main
  steps:
    - kind: model
      name: fast
      impl: modelweave.adapters.sklearn:SklearnClassifier
      params: {{model_path: {dir}/tree.joblib, input: Embedding, model_name: tree}}
    - kind: route
      name: confidence
      default: keep
      rules:
        - branch: escalate
          when: [{{field: classification.confidence, op: lt, value: 0.9}}]
      branches:
        keep: null
        escalate:
          kind: parallel
          name: ensemble
          aggregate: {{strategy: mean}}
          branches:
            - kind: model
              name: logreg
              impl: modelweave.adapters.sklearn:SklearnClassifier
              params: {{model_path: {dir}/logreg.joblib, input: Embedding, model_name: logreg}}
            - kind: model
              name: knn
              impl: modelweave.adapters.sklearn:SklearnClassifier
              params: {{model_path: {dir}/knn.joblib, input: Embedding, model_name: knn}}
"""


def build(directory: pathlib.Path) -> pathlib.Path:
    """Trains the three models into ``directory`` and writes the graph file there; returns its path."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.tree import DecisionTreeClassifier

    x, y = load_digits(return_X_y=True)
    x_train, y_train = x[:TRAIN_ROWS], y[:TRAIN_ROWS]
    joblib.dump(DecisionTreeClassifier(max_depth=6, random_state=0).fit(x_train, y_train), directory / "tree.joblib")
    joblib.dump(LogisticRegression(max_iter=2000).fit(x_train, y_train), directory / "logreg.joblib")
    joblib.dump(KNeighborsClassifier(n_neighbors=5).fit(x_train, y_train), directory / "knn.joblib")
    graph = directory / "digits.yaml"
    graph.write_text(_GRAPH.format(dir=directory), encoding="utf-8")
    return graph


def held_out(n: int) -> pa.Table:
    """``n`` held-out rows: ``id``, ``pixels`` (list<float>) and ``digit`` (the true class)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = x[TRAIN_ROWS:TRAIN_ROWS + n], y[TRAIN_ROWS:TRAIN_ROWS + n]
    return pa.table({"id": list(range(len(y))), "pixels": pa.array(x.tolist(), type=pa.list_(pa.float32())),
                     "digit": [int(v) for v in y]})

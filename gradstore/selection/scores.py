"""What a scorer returns: candidates × columns scores, each column a subtask or a target point.

Scorers and policies meet here. A column is either a whole subtask (LESS's mean target
gradient, BM25's joint query) or one target point (RDS+, LESS under round-robin); either
way it carries its subtask. A subtask's score is the mean of its target points' columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from pydantic import BaseModel

D = TypeVar("D", bound=BaseModel)


@dataclass
class ScoreMatrix(Generic[D]):
    scores: np.ndarray  # (candidates, columns) float
    subtasks: list[str]  # subtask names in order of first appearance
    column_subtask: np.ndarray  # (columns,) index into ``subtasks``
    rows: np.ndarray | None = None  # (candidates,) pool rows; None: candidate i is row i
    column_targets: list[str] | None = None  # target ID per column when columns are targets
    details: D | None = None  # the method's typed details

    def __post_init__(self) -> None:
        self.column_subtask = np.asarray(self.column_subtask, dtype=np.int64)
        if self.scores.ndim != 2 or self.scores.shape[1] != len(self.column_subtask):
            raise ValueError("scores must be (candidates, columns), one subtask per column")
        if self.rows is not None and len(self.rows) != self.scores.shape[0]:
            raise ValueError("one pool row per candidate")
        if self.column_targets is None and not np.array_equal(
            self.column_subtask, np.arange(len(self.subtasks))
        ):
            raise ValueError("subtask columns must be the subtasks, in order")

    @classmethod
    def per_subtask(
        cls, scores: np.ndarray, subtasks: list[str], rows: np.ndarray | None = None, **extra
    ) -> ScoreMatrix[D]:
        return cls(scores, subtasks, np.arange(len(subtasks)), rows, None, **extra)

    @property
    def num_candidates(self) -> int:
        return self.scores.shape[0]

    def pool_rows(self) -> np.ndarray:
        return np.arange(self.num_candidates) if self.rows is None else np.asarray(self.rows)

    def subtask_scores(self) -> np.ndarray:
        """(candidates, subtasks): the column itself, or the mean of the subtask's targets."""
        if self.column_targets is None:
            return self.scores
        out = np.empty((self.num_candidates, len(self.subtasks)), dtype=np.float64)
        for s in range(len(self.subtasks)):
            out[:, s] = self.scores[:, self.column_subtask == s].astype(np.float64).mean(axis=1)
        return out

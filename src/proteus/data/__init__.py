"""Data: readers (one per on-disk format), source combination, and the scenario builder."""

from .base import DataError, LabeledData, concat, stack
from .readers import DATASETS
from .scenario import Scenario, ScenarioOptions, Task, build_scenario, load_manifest

__all__ = ["DATASETS", "DataError", "LabeledData", "Scenario", "ScenarioOptions", "Task",
           "build_scenario", "concat", "load_manifest", "stack"]

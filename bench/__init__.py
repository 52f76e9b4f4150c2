"""advbench: a benchmark harness for adversarial robustness.

Data flow: suite.yaml -> Suite (bench.config) -> task graph (bench.plan)
-> executor (bench.runner) -> results store (bench.store) -> leaderboard (bench.report).
The rooms and where to make each common change: docs/architecture.md.
"""

__version__ = "0.1.0"

"""advbench: a benchmark harness for adversarial robustness.

Data flow: suite.yaml -> Suite (bench.config) -> task graph (bench.plan)
-> executor (bench.execute) -> results store (bench.store) -> leaderboard (bench.report).
"""

__version__ = "0.1.0"

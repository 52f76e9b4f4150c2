"""advbench: a benchmark harness for adversarial robustness.

Data flow: suite.yaml -> Suite (bench.config) -> task graph (bench.plan)
-> executor (bench.runner) -> results store (bench.store) -> leaderboard (bench.report).
The rooms and where to make each common change: docs/architecture.md.
"""

__version__ = "0.1.0"

# The Python API (bench.api), imported on first use so that `import bench` stays light.
_API = ("evaluate", "results", "export")


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")

"""onnxprune: structured pruning of exported ONNX graphs.

Physically removes whole channels and neurons so that the result is a smaller dense model,
refusing (with a reason) every group of channels whose removal it cannot prove correct.
"""

from .analysis import Analysis, Group, analyze_graph
from .context import PruneOptions, PruningContext
from .errors import BadInputError, OnnxPruneError, PassError, PipelineError
from .passes.builtin import Analyze, Calibrate, Normalize, Pass, Reconstruct, Rewrite, Score, Select
from .passes.benchmark import Benchmark
from .passes.search import Search
from .passes.verify import Verify
from .pipeline import Pipeline, PruneResult, prune
from .search.target_search import TargetUnreachable
from .sensitivity import sensitivity

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Analyze", "BadInputError", "Calibrate", "Reconstruct", "Group", "Normalize", "OnnxPruneError", "Pass", "PassError", "Pipeline",
    "PipelineError",
    "PruneOptions", "PruneResult", "PruningContext", "Rewrite", "Score", "Search", "Select", "TargetUnreachable",
    "Verify", "Benchmark", "analyze_graph", "prune", "sensitivity",
]

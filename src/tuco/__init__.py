"""tuco: how much of this answer is the fine-tuning talking?

TuCo (Tuning Contribution, Nuti et al., ICML 2025) splits every block update of a fine-tuned model
into a pre-training component (PTC) and a fine-tuning component (FTC), measures the share of the
fine-tuning component per prompt, and steers the model by scaling it (FTC-alpha).

    >>> from tuco import ModelPair
    >>> pair = ModelPair.from_pretrained("base-model", "chat-model", dtype="bfloat16")
    >>> pair.score(["Hello!"])[0].tuco
"""

from .blocks import BlockDiscoveryError, find_blocks
from .chain import ModelChain
from .compat import IncompatiblePairError
from .decompose import Decomposition, Record, adapters_off, adapters_only
from .pair import ModelPair
from .results import OutputContribution, TucoResult

__version__ = "0.1.0"

__all__ = [
    "BlockDiscoveryError",
    "Decomposition",
    "IncompatiblePairError",
    "ModelChain",
    "ModelPair",
    "OutputContribution",
    "Record",
    "TucoResult",
    "__version__",
    "adapters_off",
    "adapters_only",
    "find_blocks",
]

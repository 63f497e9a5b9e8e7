__version__ = "0.0.1"

# The top-level API. This file is the one module not generated from a notebook (nbdev only updates the
# version line above); the names come from nbs/06_model.ipynb.
from .model import (MegalodonConfig, MegalodonForCausalLM, MegalodonCache, MegalodonOutput, GenerateOutput, PRESETS,
                    param_count, from_upstream_state_dict, to_upstream_state_dict)

# Later notebooks plug into earlier ones through the path registry of `core` (nothing imports a later module):
# the decode step of notebook 09 registers itself here, and the Triton paths of notebooks 10-12 on first use, so
# that importing the package needs no triton and TRITON_INTERPRET may still be set after it.
from . import decode  # noqa: E402,F401
from .core import add_path_loader, triton_available  # noqa: E402


def _load_triton_paths() -> None:
    if triton_available(): from .ops import attention, cema, timestep_norm  # noqa: F401


add_path_loader("triton", _load_triton_paths)


def _load_transformer_paths() -> None:
    from . import vs_transformer  # noqa: F401  (registers how a Transformer checkpoint is read, for train.load_checkpoint)


add_path_loader("transformer", _load_transformer_paths)

__version__ = "0.0.1"

# The top-level API. This file is the one module not generated from a notebook (nbdev only updates the
# version line above); the names come from nbs/06_model.ipynb.
from .model import (MegalodonConfig, MegalodonForCausalLM, MegalodonCache, MegalodonOutput, GenerateOutput, PRESETS,
                    param_count, from_upstream_state_dict, to_upstream_state_dict)

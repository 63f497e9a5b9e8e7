"""What the test files share: the process setup they rely on, and the helpers and fixtures more than one of them uses.

pytest imports this file before any test module, so the setup below holds for every test however the files are
selected or spread over workers. Fixtures reach tests by name; the plain helpers and constants are imported with
`from conftest import ...` (tests/ is on `sys.path`, as for `_subproc`; a test file run as a script, such as
test_parallel.py's ranks, imports them the same way)."""
import atexit, json, os, shutil, socket, tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository

# Without a GPU the Triton kernels run in Triton's CPU interpreter; the variable must be set before triton is first
# imported, which a test module may do at collection.
if not torch.cuda.is_available(): os.environ.setdefault("TRITON_INTERPRET", "1")
# torch.compile's on-disk caches (FX graph, AOTAutograd) key a compiled graph by the operators it calls, not by the
# Python behind them: a cache left by an earlier checkout, whose kernel operators took other arguments under the same
# names, hands back a backward that calls them wrongly. Each run therefore compiles into its own folder, removed at exit
# (tools/test.sh sets one for the whole suite; a worker started without it makes its own).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _cache = tempfile.mkdtemp(prefix="megalodon-lit-inductor-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
# One thread: the machines the suite runs on are shared, and results must not depend on the thread count.
torch.set_num_threads(1)

# Where the kernel tests put their tensors: the CPU under the interpreter, else the GPU.
KERNEL_DEVICE = torch.device("cpu") if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") else torch.device("cuda")


def perturbed(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    "`model` with its zero-initialised parameters (offsets, biases) drawn from N(0, 0.2²), so that every parameter matters; in eval mode unless `train`."
    with torch.no_grad():
        for p in model.parameters():
            if torch.all(p == 0): p.normal_(0, 0.2)
    return model.train(train)


def free_port() -> int:
    "A TCP port on 127.0.0.1 that was free a moment ago."
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory) -> Path:
    "A folder of real text, ~60 KB: the source files of the standard library's json package."
    d = tmp_path_factory.mktemp("corpus")
    for f in sorted(Path(json.__file__).parent.glob("*.py")): (d / f.name).write_bytes(f.read_bytes())
    return d

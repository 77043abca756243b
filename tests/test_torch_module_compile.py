"""``torch.compile(fullgraph=True)`` of a model holding a ``BatchNorm`` prints nothing.

A user compiling ``Conv2d -> BatchNorm -> ReLU`` must see no warning and no log
line, fused or not, in training and inference, forward and backward. Checked in
a fresh interpreter: Dynamo warns once per message per process
(``torch._dynamo.utils.warn_once``), so in the test process an earlier
compilation (tests/test_compile.py ignores some warnings) would hide a warning
here; and a fresh interpreter's stderr shows whatever Dynamo logs, as a user's
would. The ``aot_eager`` backend (Dynamo and AOT autograd, where the warnings
arise) keeps it to seconds; inductor only adds code generation.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="bn_portable.torch needs PyTorch, which is not installed")

pytestmark = pytest.mark.home_backend("torch")

_SCRIPT = """
import logging, sys, warnings
import torch
from torch import nn
from bn_portable.torch import BatchNorm

logged = []
class Keep(logging.Handler):
    def emit(self, record):
        logged.append(record)
logging.getLogger("torch").addHandler(Keep(logging.WARNING))
torch.manual_seed(0)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")  # every warning, whatever the filters say
    for fused in (False, True):
        model = nn.Sequential(nn.Conv2d(3, 8, 3), BatchNorm(8, scale=True, fused=fused), nn.ReLU())
        compiled = torch.compile(model, fullgraph=True, backend=sys.argv[1])
        for training in (True, False):
            model.train(training)
            compiled(torch.randn(4, 3, 10, 10)).square().sum().backward()
for warning in caught:
    print("warning:", warning.category.__name__, warning.message, file=sys.stderr)
for record in logged:
    print("log:", record.name, record.levelname, record.getMessage(), file=sys.stderr)
print("compiled:", len(caught), "warnings,", len(logged), "log records")
"""


def test_compiling_a_model_with_the_module_prints_nothing():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("PYTHONWARNINGS", None)
    completed = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "aot_eager"],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert "compiled: 0 warnings, 0 log records" in completed.stdout, completed.stderr[-4000:]
    assert completed.stderr == "", completed.stderr[-4000:]

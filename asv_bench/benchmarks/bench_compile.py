"""Cold start: ``import numbanorm`` and the first forward + backward of every
norm in a fresh process (with the on-disk cache as it is)."""

FIRST_CALLS = """
import numpy as np
import numbanorm as nn
x = np.ones((8, 16, 4, 4), np.float32); x[0, 0, 0, 0] = 2.0
dy = np.ones_like(x)
for f, b, args in [
    (nn.layer_norm, nn.layer_norm_backward, ()),
    (nn.rms_norm, nn.rms_norm_backward, ()),
    (nn.batch_norm, nn.batch_norm_backward, ()),
    (nn.instance_norm, nn.instance_norm_backward, ()),
]:
    y, s = f(x)
    b(dy, x, s)
y, s = nn.group_norm(x, 4)
nn.group_norm_backward(dy, x, s)
w, s = nn.weight_norm(x, np.ones(8, np.float32))
nn.weight_norm_backward(dy, x, np.ones(8, np.float32), s)
"""


def timeraw_import():
    return "import numbanorm"


def timeraw_import_and_first_call_of_every_norm():
    return FIRST_CALLS

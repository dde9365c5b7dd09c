from .common import CONV, DTYPES, ROWS, WEIGHT, NormBenchmark


class GroupNorm(NormBenchmark):
    norm = "group"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

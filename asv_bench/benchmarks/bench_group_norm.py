from .common import CONV, DTYPES, _NormBenchmark


class GroupNorm(_NormBenchmark):
    norm = "group"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

from .common import CONV, DTYPES, ROWS, WEIGHT, _NormBenchmark


class InstanceNorm(_NormBenchmark):
    norm = "instance"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

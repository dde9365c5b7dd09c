from .common import CONV, DTYPES, ROWS, WEIGHT, NormBenchmark


class InstanceNorm(NormBenchmark):
    norm = "instance"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

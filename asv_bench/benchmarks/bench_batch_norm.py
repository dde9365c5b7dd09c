from .common import CONV, DTYPES, ROWS, WEIGHT, NormBenchmark


class BatchNorm(NormBenchmark):
    norm = "batch"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

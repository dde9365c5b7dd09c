from .common import CONV, DTYPES, ROWS, WEIGHT, _NormBenchmark


class BatchNorm(_NormBenchmark):
    norm = "batch"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

from .common import CONV, DTYPES, _NormBenchmark


class BatchNorm(_NormBenchmark):
    norm = "batch"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

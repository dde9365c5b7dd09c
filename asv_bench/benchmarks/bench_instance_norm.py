from .common import CONV, DTYPES, _NormBenchmark


class InstanceNorm(_NormBenchmark):
    norm = "instance"
    params = [CONV, ["nchw", "nhwc"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

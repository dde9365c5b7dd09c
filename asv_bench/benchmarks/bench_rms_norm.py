from .common import CONV, DTYPES, ROWS, WEIGHT, _NormBenchmark


class RmsNorm(_NormBenchmark):
    norm = "rms"
    params = [ROWS, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

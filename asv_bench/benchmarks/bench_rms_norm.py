from .common import CONV, DTYPES, ROWS, WEIGHT, NormBenchmark


class RmsNorm(NormBenchmark):
    norm = "rms"
    params = [ROWS, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

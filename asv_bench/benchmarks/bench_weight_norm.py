from .common import CONV, DTYPES, ROWS, WEIGHT, NormBenchmark


class WeightNorm(NormBenchmark):
    norm = "weight"
    params = [WEIGHT, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

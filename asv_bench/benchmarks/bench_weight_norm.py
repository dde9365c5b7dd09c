from .common import DTYPES, WEIGHT, _NormBenchmark


class WeightNorm(_NormBenchmark):
    norm = "weight"
    params = [WEIGHT, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

from .common import CONV, DTYPES, ROWS, WEIGHT, NormBenchmark


class LayerNorm(NormBenchmark):
    norm = "layer"
    params = [ROWS, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

from .common import CONV, DTYPES, ROWS, WEIGHT, _NormBenchmark


class LayerNorm(_NormBenchmark):
    norm = "layer"
    params = [ROWS, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

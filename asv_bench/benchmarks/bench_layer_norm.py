from .common import DTYPES, ROWS, _NormBenchmark


class LayerNorm(_NormBenchmark):
    norm = "layer"
    params = [ROWS, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

from .common import DTYPES, ROWS, _NormBenchmark


class RmsNorm(_NormBenchmark):
    norm = "rms"
    params = [ROWS, ["rows"], DTYPES]
    param_names = ["shape", "layout", "dtype"]

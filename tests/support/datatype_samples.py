"""One sample array per protocol datatype, as tritonclient hands them over (numpy, shape [2, 3])."""

import ml_dtypes
import numpy as np

_BF16_VALUES = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -0.25]], dtype=np.float32)  # exact in BF16

SAMPLES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 1, 255], [7, 8, 9]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535], [7, 8, 9]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1], [7, 8, 9]], dtype=np.uint32),
    # ... and 64-bit integers in 32 bits: the samples stay inside that range.
    "UINT64": np.array([[0, 1, 2**31 - 1], [7, 8, 9]], dtype=np.uint64),
    "INT8": np.array([[-128, 0, 127], [1, -1, 2]], dtype=np.int8),
    "INT16": np.array([[-32768, 0, 32767], [1, -1, 2]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 0, 2**31 - 1], [1, -1, 2]], dtype=np.int32),
    "INT64": np.array([[-(2**31), 0, 2**31 - 1], [1, -1, 2]], dtype=np.int64),
    "FP16": np.array([[0.5, -1.25, 65504.0], [1e-3, 0.0, -7.0]], dtype=np.float16),
    "FP32": np.array([[0.5, -1.25, 3.4e38], [1e-30, 0.0, -7.0]], dtype=np.float32),
    # OpenVINO's CPU plugin computes FP64 in FP32: the values are exact in both.
    "FP64": np.array([[0.5, -1.25, 2.0**100], [2.0**-100, 0.0, -7.0]], dtype=np.float64),
    "BF16": _BF16_VALUES.astype(ml_dtypes.bfloat16),  # tritonclient >= 26.06 wants ml_dtypes
    "BYTES": np.array(
        [[b"alpha", b"", "\u00e9t\u00e9".encode()], [b"x" * 300, b"a\x00b", b"z"]], dtype=np.object_
    ),
}

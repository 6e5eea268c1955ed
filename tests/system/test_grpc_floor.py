"""grpc.aio's floor (loadgen.bench.grpc_floor) answers as the gateway would: same metadata, as many bytes."""

from __future__ import annotations

import numpy as np


def test_the_grpc_floor_answers_with_the_models_output_shapes_for_the_benchmark_shape(tmp_path):
    import openvino as ov
    from openvino import opset13 as ops

    from gateway.demo_models import save
    from loadgen.bench.grpc_floor import model_answers, parse_shapes

    assert parse_shapes("INPUT0[1,16],INPUT1[1,16]") == {"INPUT0": [1, 16], "INPUT1": [1, 16]}
    x = ops.parameter([-1, 3, -1, -1], ov.Type.f32, name="x")
    x.output(0).get_tensor().set_names({"x"})
    scores = ops.convolution(
        x, ops.constant(np.ones((21, 3, 1, 1), np.float32)), [1, 1], [0, 0], [0, 0], [1, 1]
    )
    scores.output(0).get_tensor().set_names({"scores"})
    path = save(ov.Model([scores.output(0)], [x], "seg"), tmp_path / "seg" / "1")
    inputs, outputs, answers = model_answers(str(path), "x[1,3,64,48]")
    # metadata as the gateway shows it (dynamic dimensions -1); answers as large as the gateway's
    assert [(s.name, s.datatype, s.shape) for s in inputs] == [("x", "FP32", (-1, 3, -1, -1))]
    assert [(s.name, s.shape) for s in outputs] == [("scores", (-1, 21, -1, -1))]
    assert answers["scores"].shape == (1, 21, 64, 48) and answers["scores"].dtype == np.float32


def test_the_inferring_floor_answers_with_the_models_own_outputs(tmp_path):
    """`make bench`'s floor with inference runs the model: a real client gets simple's sum and difference,
    not the canned floor's zeros, and the calls are counted for the bench's CPU per request."""
    import tritonclient.grpc as grpcclient

    from gateway.demo_models import save, simple_model
    from loadgen.bench.peer_process import start_grpc_floor

    path = save(simple_model(), tmp_path / "simple" / "1")
    floor = start_grpc_floor(
        tmp_path / "floor.log", model=("simple", path, "INPUT0[1,16],INPUT1[1,16]"), infer=True
    )
    try:
        client = grpcclient.InferenceServerClient(floor.grpc_url)
        a = np.arange(16, dtype=np.int32).reshape(1, 16)
        b = np.full((1, 16), 3, np.int32)
        inputs = [grpcclient.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        for _ in range(3):
            result = client.infer("simple", inputs)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        assert floor.answered("simple") == 3
        client.close()
    finally:
        floor.stop()

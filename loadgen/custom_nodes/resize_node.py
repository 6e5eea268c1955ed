"""The Python twin of resize_node.c: a custom node class with the gateway's Python contract (see README)."""

import numpy as np


class CustomNode:
    def initialize(self, params: dict[str, str]) -> None:
        self.height = int(params["target_height"])
        self.width = int(params["target_width"])
        self.fail_below = float(params["fail_below"]) if "fail_below" in params else None

    def inputs_info(self):
        return {"image": ("FP32", (1, 3, -1, -1))}

    def outputs_info(self):
        return {"resized": ("FP32", (1, 3, self.height, self.width)), "original": ("FP32", (1, 3, -1, -1))}

    def execute(self, inputs):
        image = inputs["image"]
        if self.fail_below is not None and image.flat[0] < self.fail_below:
            raise ValueError(f"first pixel {image.flat[0]} is below {self.fail_below}")
        _, _, h, w = image.shape
        rows = np.arange(self.height) * h // self.height
        cols = np.arange(self.width) * w // self.width
        return {"resized": image[:, :, rows][:, :, :, cols], "original": image}

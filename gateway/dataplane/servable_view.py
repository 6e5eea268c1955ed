"""What a worker process decodes a request against: a servable's inputs, without the servable."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.core.records import TensorSpec
from gateway.pipelines.executor import Servable
from gateway.serving.model_version import check_input_count


@dataclass(frozen=True, slots=True)
class ServableView:
    """The parts of a model version or pipeline that the transports' decoders ask about."""

    name: str
    version: int
    inputs: tuple[TensorSpec, ...]
    client_inputs: tuple[TensorSpec, ...]
    image_inputs: frozenset[str]

    @classmethod
    def of(cls, servable: Servable) -> ServableView:
        inputs = tuple(servable.inputs)
        images = frozenset(s.name for s in inputs if servable.takes_images(s.name))
        return cls(servable.name, servable.version, inputs, tuple(servable.client_inputs), images)

    def check_input_count(self, given: int) -> None:
        check_input_count(len(self.inputs), given)

    def takes_images(self, name: str) -> bool:
        return name in self.image_inputs

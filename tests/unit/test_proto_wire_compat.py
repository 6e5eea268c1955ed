"""Our generated messages are wire-compatible with tritonclient's, and both load in one process."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from gateway.proto import ovgw_grpc_service_pb2 as ours_service
from gateway.proto import ovgw_model_config_pb2 as ours_config


def _walk(descriptor, prefix=""):
    yield prefix + descriptor.name, descriptor
    for nested in descriptor.nested_types:
        yield from _walk(nested, prefix + descriptor.name + ".")


def _field_signature(field: FieldDescriptor):
    kind = field.message_type.name if field.message_type else field.type
    return field.number, kind, field.is_repeated


def _check_file(ours, theirs):
    their_messages = dict(pair for m in theirs.DESCRIPTOR.message_types_by_name.values() for pair in _walk(m))
    checked = 0
    for m in ours.DESCRIPTOR.message_types_by_name.values():
        for name, descriptor in _walk(m):
            assert name in their_messages, f"{name} does not exist in Triton's protos"
            theirs_fields = their_messages[name].fields_by_name
            for field in descriptor.fields:
                assert field.name in theirs_fields, f"{name}.{field.name} is not in Triton's {name}"
                assert _field_signature(field) == _field_signature(theirs_fields[field.name]), (
                    f"{name}.{field.name}"
                )
                checked += 1
    return checked


def test_service_messages_match_triton_field_by_field():
    assert _check_file(ours_service, triton_service) > 100


def test_model_config_messages_match_triton_field_by_field():
    assert _check_file(ours_config, triton_config) > 50


def test_every_rpc_we_declare_exists_in_triton_with_the_same_types():
    theirs = triton_service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    ours = ours_service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    for name, method in ours.items():
        assert name in theirs
        assert method.input_type.name == theirs[name].input_type.name
        assert method.output_type.name == theirs[name].output_type.name
        assert method.client_streaming == theirs[name].client_streaming


def test_bytes_cross_decode():
    """A request serialised by tritonclient's classes parses with ours, unchanged."""
    req = triton_service.ModelInferRequest(model_name="m", model_version="2", id="x")
    t = req.inputs.add(name="a", datatype="FP32", shape=[1, 2])
    t.parameters["binary_data_size"].int64_param = 8
    req.parameters["priority"].uint64_param = 3
    req.raw_input_contents.append(b"\0" * 8)
    ours = ours_service.ModelInferRequest.FromString(req.SerializeToString())
    assert ours.SerializeToString() == req.SerializeToString()
    assert ours.parameters["priority"].uint64_param == 3

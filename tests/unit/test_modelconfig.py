"""config.pbtxt through the ModelConfig protobuf: build, render, parse, override, compare."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2

from repo_manager.errors import InvalidVersionError, StorageError
from repo_manager.modelconfig import (
    ModelConfig,
    TensorSpec,
    build_detector_config,
    config_to_json,
    io_signature,
    parse_config,
    render_config,
    with_version_policy,
)

IMAGES = TensorSpec(name="images", data_type="TYPE_FP32", dims=(3, 160, 160))
OUTPUT = TensorSpec(name="output0", data_type="TYPE_FP32", dims=(6, 525))


def detector_config(**overrides: object) -> ModelConfig:
    kwargs: dict[str, object] = {
        "name": "yolo",
        "backend_or_platform": "python",
        "max_batch_size": 8,
        "inputs": [IMAGES],
        "outputs": [OUTPUT],
        "instance_kind": "KIND_CPU",
        "instance_count": 1,
        "class_names": ["rectangle", "circle"],
        "imgsz": 160,
    }
    kwargs.update(overrides)
    return build_detector_config(**kwargs)  # type: ignore[arg-type]


def test_rendered_config_parses_back_to_an_equal_model_config() -> None:
    config = detector_config()
    text = render_config(config)
    assert isinstance(text, bytes)
    parsed = parse_config(text, source="config.pbtxt")
    assert isinstance(parsed, ModelConfig)
    assert parsed == config


def test_parse_config_accepts_text_as_str() -> None:
    parsed = parse_config(render_config(detector_config()).decode(), source="x")
    assert parsed.name == "yolo"


def test_parse_error_is_one_line_storage_error_naming_the_source() -> None:
    with pytest.raises(StorageError) as info:
        parse_config(b'name: "m"\nno_such_field: 1\n', source="repo/m/config.pbtxt")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("repo/m/config.pbtxt:")
    assert info.value.__cause__ is not None


def test_undecodable_bytes_are_a_storage_error() -> None:
    with pytest.raises(StorageError):
        parse_config(b"\xff\xfe\x00bad", source="c.pbtxt")


def test_python_backend_sets_backend_and_cpu_instances() -> None:
    config = detector_config()
    assert config.backend == "python"
    assert config.platform == ""
    assert config.max_batch_size == 8
    assert [(g.kind, g.count) for g in config.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)
    ]


@pytest.mark.parametrize("platform", ["onnxruntime_onnx", "tensorrt_plan"])
def test_platform_formats_set_platform_not_backend(platform: str) -> None:
    config = detector_config(backend_or_platform=platform, instance_kind="gpu", instance_count=2)
    assert config.platform == platform
    assert config.backend == ""
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == 2


def test_inputs_and_outputs_carry_name_type_and_dims() -> None:
    config = detector_config()
    (inp,) = config.input
    (out,) = config.output
    assert (inp.name, inp.data_type, list(inp.dims)) == (
        "images",
        model_config_pb2.TYPE_FP32,
        [3, 160, 160],
    )
    assert (out.name, list(out.dims)) == ("output0", [6, 525])


def test_warmup_block_is_built_from_the_real_inputs() -> None:
    other = TensorSpec(name="scale", data_type="TYPE_FP16", dims=(1,))
    config = detector_config(inputs=[IMAGES, other])
    (warmup,) = config.model_warmup
    assert warmup.batch_size == 1
    assert set(warmup.inputs) == {"images", "scale"}
    images = warmup.inputs["images"]
    assert images.data_type == model_config_pb2.TYPE_FP32
    assert list(images.dims) == [3, 160, 160]
    assert images.random_data is True
    assert warmup.inputs["scale"].data_type == model_config_pb2.TYPE_FP16
    assert list(warmup.inputs["scale"].dims) == [1]


def test_dynamic_batching_is_on_and_never_holds_a_lone_request_back() -> None:
    config = detector_config()
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0


def test_dynamic_batching_can_be_left_out() -> None:
    assert not detector_config(dynamic_batching=False).HasField("dynamic_batching")


def test_parameters_carry_class_names_as_json_and_imgsz_as_string() -> None:
    config = detector_config(parameters={"onnxruntime_intra_op_threads": "2"})
    assert json.loads(config.parameters["class_names"].string_value) == ["rectangle", "circle"]
    assert config.parameters["imgsz"].string_value == "160"
    assert config.parameters["onnxruntime_intra_op_threads"].string_value == "2"


def test_json_override_keeps_proto_field_names_and_parses_back() -> None:
    config = detector_config()
    text = config_to_json(config)
    document = json.loads(text)
    assert "max_batch_size" in document
    assert "model_warmup" in document
    assert json_format.Parse(text, ModelConfig()) == config


def test_with_version_policy_returns_a_copy_serving_exactly_those_versions() -> None:
    config = detector_config()
    pinned = with_version_policy(config, ["3", "2"])
    assert list(pinned.version_policy.specific.versions) == [2, 3]
    assert not config.HasField("version_policy")
    assert pinned.name == config.name


def test_with_version_policy_replaces_an_earlier_policy() -> None:
    config = with_version_policy(detector_config(), ["1"])
    assert list(with_version_policy(config, ["2"]).version_policy.specific.versions) == [2]


@pytest.mark.parametrize("versions", [["x"], ["0"], ["-1"], []])
def test_with_version_policy_refuses_anything_but_positive_integers(versions: list[str]) -> None:
    with pytest.raises(InvalidVersionError):
        with_version_policy(detector_config(), versions)


def test_io_signature_ignores_tensor_order_and_everything_but_io() -> None:
    a = detector_config(outputs=[OUTPUT, TensorSpec(name="aux", data_type="TYPE_FP32", dims=(1,))])
    b = detector_config(
        outputs=[TensorSpec(name="aux", data_type="TYPE_FP32", dims=(1,)), OUTPUT],
        backend_or_platform="onnxruntime_onnx",
        class_names=["x", "y"],
    )
    assert io_signature(a) == io_signature(b)
    assert io_signature(a)[0] == 8


def test_io_signature_differs_when_dims_type_or_batch_differ() -> None:
    base = io_signature(detector_config())
    other_dims = TensorSpec(name="output0", data_type="TYPE_FP32", dims=(7, 525))
    assert io_signature(detector_config(outputs=[other_dims])) != base
    other_type = TensorSpec(name="images", data_type="TYPE_FP16", dims=(3, 160, 160))
    assert io_signature(detector_config(inputs=[other_type])) != base
    assert io_signature(detector_config(max_batch_size=4)) != base


def test_tensor_spec_refuses_an_unknown_data_type() -> None:
    with pytest.raises(ValueError):
        TensorSpec(name="x", data_type="FLOAT", dims=(1,))

"""``tf.train.Example`` as a protobuf message class, without TensorFlow.

The schema (tensorflow/core/example/{example,feature}.proto) is tiny, so it is declared here as a
``FileDescriptorProto`` and built in a private descriptor pool: no generated ``_pb2`` module to
keep in step with the protobuf runtime, and no clash with TensorFlow's own registration of
``tensorflow.Example`` when both are imported in one process. Wire format::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }
    Feature  { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                            Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed = true]; }
    Int64List { repeated int64 value = 1 [packed = true]; }
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    fdp = descriptor_pb2.FileDescriptorProto(name="vladata/oxe/tf_example.proto",
                                             package="tensorflow", syntax="proto3")
    for name, typ, packed in (("BytesList", _F.TYPE_BYTES, False),
                              ("FloatList", _F.TYPE_FLOAT, True),
                              ("Int64List", _F.TYPE_INT64, True)):
        f = fdp.message_type.add(name=name).field.add(name="value", number=1, type=typ,
                                                      label=_F.LABEL_REPEATED)
        if packed:
            f.options.packed = True
    feature = fdp.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for num, name, typ in ((1, "bytes_list", "BytesList"), (2, "float_list", "FloatList"),
                           (3, "int64_list", "Int64List")):
        feature.field.add(name=name, number=num, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                          type_name=f".tensorflow.{typ}", oneof_index=0)
    features = fdp.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=_F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
                    type_name=".tensorflow.Feature")
    features.field.add(name="feature", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_REPEATED,
                       type_name=".tensorflow.Features.FeatureEntry")
    fdp.message_type.add(name="Example").field.add(
        name="features", number=1, type=_F.TYPE_MESSAGE, label=_F.LABEL_OPTIONAL,
        type_name=".tensorflow.Features")
    return fdp


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())

Example = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.Example"))
Feature = message_factory.GetMessageClass(_pool.FindMessageTypeByName("tensorflow.Feature"))

__all__ = ["Example", "Feature"]

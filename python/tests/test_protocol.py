import pytest

import protocol


def test_message_sets_its_kind_and_takes_its_fields():
    assert protocol.message(protocol.TOOK, pid=7) == {"op": "took", "pid": 7}
    assert protocol.message(protocol.ERROR, error="no") == {"type": "error", "error": "no"}


def test_message_refuses_an_unknown_or_missing_field():
    with pytest.raises(ValueError, match=r"unknown fields \['pdi'\], missing \['pid'\]"):
        protocol.message(protocol.TOOK, pdi=7)


def test_optional_fields_may_be_left_out():
    msg = protocol.message(protocol.RUN, run="r", dir="/d", env={})
    assert "isolate" not in msg
    with pytest.raises(ValueError, match="missing"):
        protocol.message(protocol.RUN, run="r", dir="/d")


def test_every_optional_field_is_a_field():
    for kind, names in protocol.OPTIONAL.items():
        assert set(names) <= set(protocol.FIELDS[kind])

"""InfluxDB line protocol: parsing what Julia jobs write, and formatting points."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from juliarun.errors import JuliaRunError, LineProtocolError
from juliarun.metrics.base import Point
from juliarun.metrics.lineprotocol import format_point, parse_line, parse_lines

NOW = datetime(2024, 5, 1, 8, 30, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def one(line: str) -> Point:
    (point,) = parse_line(line, NOW)
    return point


def test_minimal_line_uses_now() -> None:
    assert one("cpu value=0.5") == Point("cpu", 0.5, NOW, {})


def test_tags_fields_and_timestamp() -> None:
    points = parse_line("gpu,host=n1,id=0 util=0.75,mem=1024i,value=3 1700000000123456789", NOW)
    when = datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC)
    tags = {"host": "n1", "id": "0"}
    assert points == [
        Point("gpu.util", 0.75, when, tags),
        Point("gpu.mem", 1024.0, when, tags),
        Point("gpu", 3.0, when, tags),
    ]


def test_default_now_is_current_utc_time() -> None:
    before = datetime.now(UTC)
    (point,) = parse_line("x value=1")
    assert before <= point.timestamp <= datetime.now(UTC)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", 1.0),
        ("-1.5", -1.5),
        ("+2.", 2.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("-2.5E-2", -0.025),
        ("42i", 42.0),
        ("-42i", -42.0),
        ("7u", 7.0),
        ("t", 1.0),
        ("T", 1.0),
        ("true", 1.0),
        ("True", 1.0),
        ("TRUE", 1.0),
        ("f", 0.0),
        ("F", 0.0),
        ("false", 0.0),
        ("False", 0.0),
        ("FALSE", 0.0),
    ],
)
def test_field_value_types(raw: str, value: float) -> None:
    assert one(f"m value={raw}").value == value


@pytest.mark.parametrize(
    ("line", "name", "tags"),
    [
        (r"my\ metric value=1", "my metric", {}),
        (r"a\,b value=1", "a,b", {}),
        (r"a=b value=1", "a=b", {}),  # '=' needs no escape in a measurement
        (r"a\=b value=1", "a=b", {}),
        (r"m,k\ 1=v\ 1 value=1", "m", {"k 1": "v 1"}),
        (r"m,k\,1=v\,1 value=1", "m", {"k,1": "v,1"}),
        (r"m,k\=1=v\=1 value=1", "m", {"k=1": "v=1"}),
        (r"m,path=C:\\dir value=1", "m", {"path": "C:\\dir"}),
        (r"m,path=C:\dir value=1", "m", {"path": "C:\\dir"}),  # lone backslash kept
        (r"m\\ value=1", "m\\", {}),  # an escaped backslash
        ("   indented value=1", "indented", {}),
        ("ünï,città=zürich value=1", "ünï", {"città": "zürich"}),
    ],
)
def test_escapes(line: str, name: str, tags: dict[str, str]) -> None:
    point = one(line)
    assert (point.name, dict(point.tags)) == (name, tags)


def test_escaped_field_key() -> None:
    assert one(r"m my\ field=1").name == "m.my field"
    assert [p.name for p in parse_line(r"m a\,b=1,c\=d=2 0", NOW)] == ["m.a,b", "m.c=d"]


def test_timestamps() -> None:
    assert one("m value=1 0").timestamp == EPOCH
    assert one("m value=1 1999").timestamp == EPOCH + timedelta(microseconds=1)
    assert one("m value=1 -1000").timestamp == EPOCH - timedelta(microseconds=1)
    assert one("m value=1 1700000000000000000  ").timestamp == datetime(
        2023, 11, 14, 22, 13, 20, tzinfo=UTC
    )


@pytest.mark.parametrize("line", ["", "   ", "# a comment", "  # indented comment", "\n", "\r\n"])
def test_blank_and_comment_lines_have_no_points(line: str) -> None:
    assert parse_line(line, NOW) == []


def test_line_endings_are_stripped() -> None:
    assert one("m value=1 0\r\n").timestamp == EPOCH


def test_multiple_spaces_between_sections() -> None:
    assert one("m,a=b   value=1   0") == Point("m", 1.0, EPOCH, {"a": "b"})


@pytest.mark.parametrize(
    ("line", "column", "rule"),
    [
        (",a=b value=1", 1, "missing measurement"),
        ("m", 2, "missing field set"),
        ("m,a=b", 6, "missing field set"),
        ("m ", 3, "missing field set"),
        ("m,=b value=1", 3, "empty tag key"),
        ("m,a value=1", 4, "tag 'a' must be key=value"),
        ("m,a=b,c value=1", 8, "tag 'c' must be key=value"),
        ("m,a= value=1", 5, "empty value for tag 'a'"),
        ("m,a=b=c value=1", 6, "unescaped '=' in a tag value"),
        ("m,a=1,a=2 value=1", 9, "duplicate tag 'a'"),
        ("m =1", 3, "empty field key"),
        ("m value", 8, "field 'value' must be key=value"),
        ("m value=1,x", 12, "field 'x' must be key=value"),
        ("m value=", 9, "missing value for field 'value'"),
        ("m value=1,x=", 13, "missing value for field 'x'"),
        ('m msg="hello world"', 7, "string field values are not metrics"),
        ("m value=abc", 9, "invalid value 'abc' for field 'value'"),
        ("m value=1.2.3", 9, "invalid value '1.2.3'"),
        ("m value=nan", 9, "invalid value 'nan'"),
        ("m value=inf", 9, "invalid value 'inf'"),
        ("m value=1_000", 9, "invalid value '1_000'"),
        ("m value=\u0661", 9, "invalid value '\u0661'"),  # non-ASCII digits are not numbers
        ("m value=1.5i", 9, "invalid value '1.5i'"),
        ("m value=-1u", 9, "invalid value '-1u'"),
        ("m value=yes", 9, "invalid value 'yes'"),
        ("m value=1e999", 9, "value '1e999' for field 'value' is out of range"),
        ("m value=1,value=2", 16, "duplicate field 'value'"),
        ("m value=1 12.5", 11, "timestamp '12.5' is not integer nanoseconds"),
        ("m value=1 now", 11, "timestamp 'now' is not integer nanoseconds"),
        ("m value=1 99999999999999999999999999", 11, "out of range"),
        ("m value=1 0 extra", 13, "unexpected text after the timestamp"),
        ("m value=1\nother value=2", 10, "a line must not contain a newline"),
    ],
)
def test_error_rules(line: str, column: int, rule: str) -> None:
    with pytest.raises(LineProtocolError) as info:
        parse_line(line, NOW, lineno=7)
    err = info.value
    assert rule in err.rule
    assert err.column == column
    assert err.lineno == 7
    assert err.line == line.rstrip("\r\n")
    assert isinstance(err, JuliaRunError)
    assert err.hint
    assert f"line 7, column {column}" in str(err)


def test_parse_lines_keeps_good_lines_and_reports_bad_ones() -> None:
    text = "\n".join(
        [
            "# header",
            "loss,epoch=1 value=0.5 1000",
            'loss,epoch=2 value="oops"',
            "",
            "acc,epoch=1 top1=0.9,top5=0.99",
            "garbage",
            "loss,epoch=3 value=0.25 3000",
        ]
    )
    points, errors = parse_lines(text + "\n", NOW)
    assert [(p.name, p.tags.get("epoch"), p.value) for p in points] == [
        ("loss", "1", 0.5),
        ("acc.top1", "1", 0.9),
        ("acc.top5", "1", 0.99),
        ("loss", "3", 0.25),
    ]
    assert points[1].timestamp == NOW
    assert [(e.lineno, e.column) for e in errors] == [(3, 20), (6, 8)]
    assert "string field" in errors[0].rule


def test_parse_lines_reads_now_once() -> None:
    points, errors = parse_lines("a value=1\nb value=2")
    assert errors == []
    assert points[0].timestamp == points[1].timestamp


def test_parse_lines_splits_on_newline_only() -> None:
    # other Unicode line breaks are ordinary characters of a name
    points, errors = parse_lines("a\u2028b value=1 0\r\nc value=2 0")
    assert errors == []
    assert [p.name for p in points] == ["a\u2028b", "c"]


def test_format_point() -> None:
    point = Point("cpu load", 0.5, EPOCH + timedelta(seconds=1), {"z": "1", "a,b": "x=y"})
    assert format_point(point) == r"cpu\ load,a\,b=x\=y,z=1 value=0.5 1000000000"


def test_format_point_naive_timestamp_is_utc() -> None:
    assert format_point(Point("x", 1.0, datetime(1970, 1, 1, 0, 0, 2))) == "x value=1.0 2000000000"


@pytest.mark.parametrize(
    ("point", "rule"),
    [
        (Point("", 1.0, NOW), "missing measurement"),
        (Point("#x", 1.0, NOW), "comment"),
        (Point("a\nb", 1.0, NOW), "newlines"),
        (Point("x", 1.0, NOW, {"k": "v\r"}), "newlines"),
        (Point("x", 1.0, NOW, {"": "v"}), "empty tag"),
        (Point("x", 1.0, NOW, {"k": ""}), "empty tag"),
        (Point("x", float("nan"), NOW), "finite"),
        (Point("x", float("-inf"), NOW), "finite"),
    ],
)
def test_format_point_refuses_what_line_protocol_cannot_carry(point: Point, rule: str) -> None:
    with pytest.raises(LineProtocolError) as info:
        format_point(point)
    assert rule in info.value.rule
    assert info.value.column is None


_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n\r"),
    min_size=1,
    max_size=12,
)
_points = st.builds(
    Point,
    name=_text.filter(lambda s: not s.startswith("#")),
    value=st.floats(allow_nan=False, allow_infinity=False),
    timestamp=st.datetimes(
        min_value=datetime(1677, 9, 22),
        max_value=datetime(2262, 4, 11),
        timezones=st.just(UTC),
    ),
    tags=st.dictionaries(_text, _text, max_size=4),
)


@given(_points)
def test_format_then_parse_round_trips(point: Point) -> None:
    assert parse_line(format_point(point), NOW) == [point]


@given(st.text(max_size=40))
def test_parse_line_never_fails_unexpectedly(line: str) -> None:
    try:
        points = parse_line(line, NOW)
    except LineProtocolError as err:
        assert err.column is not None
        assert 1 <= err.column <= len(line) + 1
    else:
        assert all(isinstance(p.value, float) for p in points)

"""URIs (longvila_contract.uri): the regex text the CRD's CEL rules use and the parser every
reader uses accept the same things; errors name the field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from longvila_contract.uri import (
    DATA_URI,
    HTTP_ENDPOINT,
    MODEL_URI,
    S3_URI,
    URI,
    URIError,
    check_endpoint,
    local_path,
    parse_uri,
)


@pytest.mark.parametrize(
    ("text", "scheme", "bucket", "prefix"),
    [
        ("s3://longvila/demo/sft", "s3", "longvila", "demo/sft"),
        ("s3://longvila/demo/sft/", "s3", "longvila", "demo/sft"),
        ("s3://longvila", "s3", "longvila", ""),
        ("file:///tmp/ckpt/", "file", "", "/tmp/ckpt"),
        ("synthetic://long-video", "synthetic", "", "long-video"),
    ],
)
def test_parse_uri(text: str, scheme: str, bucket: str, prefix: str) -> None:
    u = parse_uri(text, schemes=("s3", "file", "synthetic"))
    assert (u.scheme, u.bucket, u.prefix) == (scheme, bucket, prefix)
    assert parse_uri(str(u), schemes=("s3", "file", "synthetic")) == u


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("gs://b/p", "unsupported scheme 'gs'"),
        ("s3://B_ad/p", "bucket 'B_ad'"),
        ("s3://bucket/a//b", "empty, '.' or '..'"),
        ("s3://bucket/a/../b", "empty, '.' or '..'"),
        ("file://relative/path", "absolute path"),
        ("file:///a/../b", "'..'"),
        ("/no/scheme", "unsupported scheme"),
        ("synthetic://captions", "unsupported scheme 'synthetic'"),
    ],
)
def test_bad_uri_names_the_field_and_the_allowed_forms(text: str, needle: str) -> None:
    with pytest.raises(URIError) as e:
        parse_uri(text, field="LONGVILA_CHECKPOINT_URI")
    assert str(e.value).startswith("LONGVILA_CHECKPOINT_URI")
    assert needle in str(e.value)


def test_the_message_lists_what_is_allowed() -> None:
    with pytest.raises(URIError, match=r"expected s3://<bucket>/<prefix>$"):
        parse_uri("file:///x", "checkpoint.uri", schemes=("s3",))
    with pytest.raises(URIError, match="synthetic://<generator name>"):
        parse_uri("http://x", "data.uri", schemes=("s3", "file", "synthetic"))


GOOD = [
    "s3://models/qwen2-7b",
    "s3://a.b-c/x/y.safetensors",
    "file:///opt/longvila/tiny",
    "synthetic://captions",
]
BAD = [
    "s3://A/x",
    "s3://ab",
    "s3://models/with space",
    "file://rel",
    "gs://b/x",
    "synthetic://Caps",
    "",
    "/abs",
]


@pytest.mark.parametrize("text", GOOD + BAD)
def test_the_cel_regex_and_the_parser_agree(text: str) -> None:
    """What the API server admits is what the trainer can parse (and the other way round)."""
    for regex, schemes in (
        (S3_URI, ("s3",)),
        (MODEL_URI, ("s3", "file")),
        (DATA_URI, ("s3", "file", "synthetic")),
    ):
        try:
            parse_uri(text, schemes=schemes)  # type: ignore[arg-type]
            parsed = True
        except URIError:
            parsed = False
        assert (re.fullmatch(regex, text) is not None) == parsed, (regex, text)
        assert "\\" not in regex, "the same text must be valid inside a CEL string literal"


def test_key_and_join() -> None:
    assert parse_uri("s3://bkt/x/y").key("step-00000001/manifest.json") == "x/y/step-00000001/manifest.json"
    assert parse_uri("s3://bkt").key("final.json") == "final.json"
    assert str(parse_uri("s3://bkt/x").join("a/b")) == "s3://bkt/x/a/b"
    assert str(parse_uri("file:///d").join("sft/")) == "file:///d/sft"
    with pytest.raises(URIError, match=r"'\.\.'"):
        parse_uri("s3://bkt/x").join("../y")


def test_local_path_resolves_each_scheme(tmp_path: Path) -> None:
    fetched: list[URI] = []

    def fetch(u: URI) -> Path:
        fetched.append(u)
        return tmp_path / "copy"

    assert local_path(f"file://{tmp_path}", fetch) == tmp_path
    assert local_path(str(tmp_path), fetch) == tmp_path  # a bare absolute path, for direct runs
    assert local_path("s3://bkt/w", fetch, "model.llm") == tmp_path / "copy"
    assert [str(u) for u in fetched] == ["s3://bkt/w"]
    with pytest.raises(URIError, match=r"model\.llm=s3://bkt/w: s3:// is not supported here"):
        local_path("s3://bkt/w", None, "model.llm")
    with pytest.raises(URIError, match="synthetic data has no files"):
        local_path(parse_uri("synthetic://x", schemes=("synthetic",)), fetch, "data.uri")


def test_endpoint() -> None:
    check_endpoint("", "e")
    check_endpoint("http://127.0.0.1:7070", "e")
    assert re.fullmatch(HTTP_ENDPOINT, "https://s3.example.com/")
    with pytest.raises(URIError, match="AWS_ENDPOINT_URL_S3='minio:9000'"):
        check_endpoint("minio:9000", "AWS_ENDPOINT_URL_S3")

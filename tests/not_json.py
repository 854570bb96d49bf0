"""Request bodies that are not JSON at all (multipart forms, form encoding, XML, stray bytes),
and the content types they may come under: shared by the fuzz tests of every JSON route."""

from __future__ import annotations

import json
from urllib.parse import urlencode

from hypothesis import strategies as st

__all__ = ["CONTENT_TYPES", "NOT_JSON", "is_json"]


def is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except ValueError:
        return False
    return True


NOT_JSON = st.one_of(
    st.just(b'--b\r\nContent-Disposition: form-data; name="id"\r\n\r\nx\r\n--b--\r\n'),
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3).map(lambda d: urlencode(d).encode()),
    # the same unescaped, as a careless client writes it
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), min_size=1, max_size=3).map(
        lambda d: "&".join(f"{k}={v}" for k, v in d.items()).encode()
    ),
    st.just(b"<?xml version='1.0'?><event/>"),
    st.binary(max_size=40).filter(lambda b: not is_json(b)),
)
CONTENT_TYPES = st.sampled_from(
    ["multipart/form-data; boundary=b", "application/x-www-form-urlencoded", "text/plain", "application/xml",
     "application/json", ""]
)  # fmt: skip

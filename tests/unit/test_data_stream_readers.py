"""The streaming readers under the hostile-input fixes (issue 14, section 5): JSON elements parsed
as bytes arrive, whatever the chunking, and CSV faults that cost one line each."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge_trainer.data.csv_rows import CsvFault, CsvRow, csv_rows
from forge_trainer.data.json_stream import ElementTooLong, EmptyDocument, json_elements


@pytest.mark.parametrize("chunk", [1, 3, 7, 1 << 20])
def test_json_elements_are_the_same_whatever_the_chunk_size(chunk: int) -> None:
    values = [{"text": "a", "n": 12345}, 6789, "str\\u00e9", [1.5e3, None], {"t": "é€𝄞"}, -0.25, True]
    data = json.dumps(values, ensure_ascii=False).encode()  # multi-byte characters split across chunks
    chunks = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    assert [v for v, _ in json_elements(chunks, 1000)] == json.loads(data)
    assert [v for v, _ in json_elements([b' {"one": 1} '], 1000)] == [{"one": 1}]
    assert list(json_elements([b"[", b" ] "], 1000)) == []


@pytest.mark.parametrize("data, error", [
    (b"  \n ", EmptyDocument),
    (b'[{"a": 1}, {"a": 2]', json.JSONDecodeError),
    (b'[{"a": 1} {"a": 2}]', json.JSONDecodeError),
    (b'[{"a": 1}, ]', json.JSONDecodeError),
    (b'[{"a": 1}] trailing', json.JSONDecodeError),
    (b'[{"a": 1},' + b" " * 100 + b'"\xff"]', UnicodeDecodeError),  # the bad byte comes in a later chunk
    (b'[{"a": 1}, "' + b"x" * 5000 + b'"]', ElementTooLong),
    (b"[{\"a\": 1}, " + b"[" * 100_000, RecursionError),
    (b'[{"a": 1}, ' + b"7" * 5000 + b"]", ValueError),  # past Python's int digit limit
])
def test_json_elements_yield_what_precedes_a_fault_then_raise(data: bytes, error: type[Exception]) -> None:
    got: list[Any] = []
    with pytest.raises(error):
        for value, _ in json_elements([data[i:i + 64] for i in range(0, len(data), 64)], 1000):
            got.append(value)
    assert got == ([] if error is EmptyDocument else [{"a": 1}])


def test_csv_faults_are_each_counted_and_a_bad_header_ends_the_file() -> None:
    every_line = b"id,text\n" + b"".join(f'{i},"open {i}\n'.encode() for i in range(1000))
    items = list(csv_rows(every_line.splitlines(), 10**6))
    assert [type(i) for i in items] == [CsvFault] * 1000  # each quote closes the previous one badly
    assert [i.line for i in items] == list(range(2, 1002))
    header = list(csv_rows([b'id,"text', b"1,a", b"2,b"], 10**6))
    assert len(header) == 1 and isinstance(header[0], CsvFault) and header[0].message.startswith("header: ")
    rows = list(csv_rows([b"id,text", b'1,"two', b'lines"', b"\xff,x", b"3,c"], 10**6))
    assert [(type(r).__name__, r.line) for r in rows] == [("CsvRow", 2), ("CsvBadLine", 4), ("CsvRow", 5)]
    assert isinstance(rows[0], CsvRow) and rows[0].fields == {"id": "1", "text": "two\nlines"}

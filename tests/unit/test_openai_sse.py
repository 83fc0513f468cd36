"""The worker's decoding of OpenAI-style SSE data, however the bytes are split."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import pytest
from parley_worker.providers.openai_sse import iter_sse_json

BODY = (
    b": keep-alive\n\n"
    b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
    b"event: chunk\r\n"
    b'data: {"choices":[{"delta":{"content":"lo"}}]}\r\n\r\n'
    b"data: [DONE]\n\n"
    b'data: {"after":"done"}\n\n'
)


class Body:
    """A streamed HTTP response as the SDK's `post` returns it, its bytes arriving in
    pieces of `step`; `read` counts how far it was read."""

    def __init__(self, body: bytes, step: int) -> None:
        self.body = body
        self.step = step
        self.read = 0
        self.response = httpx2.Response(
            200,
            content=self._pieces(),
            request=httpx2.Request("POST", "http://sim/v1/chat/completions"),
        )

    async def _pieces(self) -> AsyncIterator[bytes]:
        for i in range(0, len(self.body), self.step):
            self.read = i + self.step
            yield self.body[i : i + self.step]


async def collect(body: Body) -> list[dict[str, Any]]:
    return [obj async for obj in iter_sse_json(body.response)]


@pytest.mark.parametrize("step", [1, 2, 7, 64, 4096])
async def test_data_objects_in_order_up_to_done_and_the_body_is_read_to_the_end(step: int):
    body = Body(BODY, step)
    got = await collect(body)
    assert got == [
        {"choices": [{"delta": {"content": "Hel"}}]},
        {"choices": [{"delta": {"content": "lo"}}]},
    ]
    assert body.read >= len(BODY)  # drained after [DONE], so the connection can be reused


async def test_an_error_object_in_the_stream_raises_the_sdks_api_error():
    body = Body(
        b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
        b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n',
        5,
    )
    with pytest.raises(openai.APIError, match="overloaded") as info:
        await collect(body)
    assert info.value.body == {"message": "overloaded", "type": "server_error"}


async def test_multi_line_data_is_joined_with_newlines():
    body = Body(b'data: {"a":\ndata: 1}\n\n', 3)
    assert await collect(body) == [{"a": 1}]

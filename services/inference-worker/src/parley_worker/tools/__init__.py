"""Tools a model may call during a turn: web search and web fetch (docs/web-tools.md).

`web.WebTools` is what the turn runner uses; `search`, `fetch` and `ssrf` are its
parts; `untrusted` is how web content is handed to the model.
"""

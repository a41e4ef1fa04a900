"""``vip2scan explore OUT --serve``: the explorer's page served locally, read-only, with aiohttp.

Fixed routes only, GET only: the page's three files, ``data/meta.js`` (the overview with
``api`` set), and ``api/rows``, ``api/object``, ``api/picture`` (answered by
:class:`vip2scan.jobs.explore_served.ServedLake`). An object is only ever looked up among the
current objects of OUT: a URI from the client is a key into that table, never a path to read.
Bound to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import typer
from aiohttp import web

from vip2scan.jobs.explore_served import BadRequest, ServedLake
from vip2scan.jobs.explorer_page import STATIC_FILES, script, static_file
from vip2scan.jobs.terminal import printable

WORKERS = 4
TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def make_app(served: ServedLake) -> web.Application:
    """The server's routes over ``served``."""
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="explore-query")
    files = {name: static_file(name) for name in STATIC_FILES}
    files["data/meta.js"] = script("setMeta", served.meta)

    async def blocking(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    def page_file(name: str) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            kind = TYPES["." + name.rsplit(".", 1)[-1]]
            return web.Response(body=files[name], content_type=kind, charset="utf-8", headers=HEADERS)
        return handler

    async def answer(fn: Callable[..., Any], *args: Any) -> web.Response:
        try:
            body = await blocking(fn, *args)
        except BadRequest as e:
            return web.json_response({"error": str(e)}, status=400, headers=HEADERS)
        except LookupError as e:
            return web.json_response({"error": str(e.args[0] if e.args else e)}, status=404, headers=HEADERS)
        if isinstance(body, bytes):
            return web.Response(body=body, content_type="image/png", headers=HEADERS)
        return web.json_response(body, headers=HEADERS, dumps=lambda v: json.dumps(v, allow_nan=False))

    def uri_of(request: web.Request) -> str:
        uri = request.query.get("uri", "")
        if not uri:
            raise web.HTTPBadRequest(text="uri is required")
        return uri

    async def rows(request: web.Request) -> web.Response:
        return await answer(served.rows, dict(request.query))

    async def one(request: web.Request) -> web.Response:
        return await answer(served.object, uri_of(request))

    async def picture(request: web.Request) -> web.Response:
        return await answer(served.picture, uri_of(request), request.query.get("kind", "image"))

    async def close_pool(app: web.Application) -> None:
        pool.shutdown(wait=False, cancel_futures=True)

    app = web.Application()
    app.router.add_get("/", page_file("index.html"))
    for name in files:
        app.router.add_get("/" + name, page_file(name))
    app.router.add_get("/api/rows", rows)
    app.router.add_get("/api/object", one)
    app.router.add_get("/api/picture", picture)
    app.on_cleanup.append(close_pool)
    return app


async def run_server(app: web.Application, host: str, port: int, ready: Callable[[str], None]) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        address = runner.addresses[0]
        shown = f"[{address[0]}]" if ":" in address[0] else address[0]
        ready(f"http://{shown}:{address[1]}/")
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def serve_explorer(out: str, storage_options: dict, host: str, port: int,
                   deadline: float | None = None) -> None:
    """Serve OUT's explorer until Ctrl-C. Reading the lake's state at start-up runs under the
    reader ``deadline`` (a hung store ends it with one line); serving has none."""
    from vip2scan.jobs.deadline import reader_deadline
    from vip2scan.pipeline.deadline import step
    from vip2scan.pipeline.output.views import Outputs

    outputs = Outputs(out, storage_options)
    with reader_deadline("explore", deadline), step("reading the lake's state"):
        served = ServedLake(outputs)
    for line in served.lake.warnings:
        typer.echo(printable(f"warning: {line}"), err=True)

    def ready(url: str) -> None:
        typer.echo(f"explorer: {url} ({served.meta['n_rows']} objects; read-only; Ctrl-C stops it)")

    try:
        asyncio.run(run_server(make_app(served), host, port, ready))
    except KeyboardInterrupt:
        typer.echo("explorer: stopped")
    except OSError as e:
        raise SystemExit(printable(f"error: cannot serve on {host}:{port}: {e.strerror or e}")) from None

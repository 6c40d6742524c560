"""A stand-in for the Echo service, on 127.0.0.1: ``python tests/echo_server.py --port 8765``."""

import argparse

from aiohttp import web


async def reply(request: web.Request) -> web.Response:
    body = await request.json()
    if body.get("model") != "echo-1":
        return web.json_response({"error": f"no model {body.get('model')!r}"}, status=404)
    return web.json_response({"reply": f"echo: {body['prompt']}"})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/reply", reply)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8765)
    web.run_app(make_app(), host="127.0.0.1", port=parser.parse_args().port)

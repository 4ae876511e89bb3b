"""``python -m sollol_ollama.testing``: one Ollama emulator as a process, for tests and examples
that need an Ollama node outside their own event loop (a script, another language's client).

    python -m sollol_ollama.testing --port 11434 --name gpu-a --parallel 2

It prints ``listening on http://HOST:PORT`` once it accepts connections and runs until SIGINT
or SIGTERM. Models are the emulator's defaults unless ``--model`` names them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from .cost import CostModel
from .emulator import OllamaEmulator
from .models import DEFAULT_MODELS, EmulatedModel


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sollol_ollama.testing",
                                     description="Run one Ollama emulator until stopped.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--name", default="emulator", help="the node's name in its replies")
    parser.add_argument("--model", action="append", dest="models", metavar="NAME",
                        help="a model it lists and serves (repeat; default: "
                             + ", ".join(m.name for m in DEFAULT_MODELS) + ")")
    parser.add_argument("--parallel", type=int, default=1, help="requests served at once")
    parser.add_argument("--tokens-per-s", type=float, default=500.0, help="decode speed")
    parser.add_argument("--prefill-tokens-per-s", type=float, default=None,
                        help="turn the cost model on: prefill speed, per-slot prompt cache")
    parser.add_argument("--output-tokens", type=int, default=32,
                        help="reply length with the cost model, unless num_predict says")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    models = (tuple(EmulatedModel(name) for name in args.models) if args.models
              else DEFAULT_MODELS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    cost = (CostModel(prefill_tokens_per_s=args.prefill_tokens_per_s,
                      output_tokens=args.output_tokens)
            if args.prefill_tokens_per_s is not None else None)
    async with OllamaEmulator(name=args.name, models=models, parallel=args.parallel,
                              tokens_per_s=args.tokens_per_s, host=args.host,
                              port=args.port, cost=cost) as node:
        print(f"listening on {node.url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # the port is taken, the host is not ours
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())

"""OpenAI-compatible HTTP server over the frod_rt Engine (see docs/server.md).

    create_app(engine)      the FastAPI app (one engine loop thread for all clients)
    serve(engine, ...)      run it with uvicorn in the foreground
    ServerThread(engine)    run it on a background thread (tests, embedding)
    EngineLoop(engine)      the step loop and per-request queues
    ServerConfig(...)       limits and security options (API key, adapter root, hosts, ...)
"""
from .app import create_app
from .config import ServerConfig
from .loop import EngineLoop
from .runner import ServerThread, free_port, serve

__all__ = ["create_app", "serve", "ServerThread", "ServerConfig", "EngineLoop", "free_port"]

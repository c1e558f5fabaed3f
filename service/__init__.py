"""The HTTP edge of gradstore: the FastAPI app, its routes and the service commands."""

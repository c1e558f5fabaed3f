"""The HTTP edge of gradstore: FastAPI app, database models and settings."""

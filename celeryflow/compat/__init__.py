"""Facades that let code written for other workflow SDKs run on celeryflow.

``celeryflow.compat.inngest`` mirrors the Inngest Python SDK (0.5.x): change the
import lines and the functions run on your Celery workers.
"""

__all__: list[str] = []

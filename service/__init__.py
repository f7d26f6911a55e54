"""fewstep's HTTP service: a FastAPI app, a Redis Streams batching queue and GPU/CPU workers.

`service` imports `model`, never `training`.
"""

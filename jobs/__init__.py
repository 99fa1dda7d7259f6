"""The torch-free layer that the API and the workers both stand on: the job contract, the edit
rules, settings, the Redis connection and the queue client. Imports no torch (tested)."""

"""A small Python client of the HTTP API: edits and batches (submit, status, wait with a progress
bar, download), webhook secrets and deliveries."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("finished", "failed", "canceled")
BATCH_FINAL = ("completed", "canceled", "expired")
EXTENSIONS = {"image/png": "png", "image/webp": "webp"}


class ServiceError(RuntimeError):
    """An error answer of the API, with its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SDEditClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None,
                 timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SDEditClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text or response.reason_phrase
            raise ServiceError(response.status_code, message)
        return response

    def submit(self, image: bytes | str | Path, mask: bytes | str | Path | None = None,
               idempotency_key: str | None = None, **parameters: Any) -> str:
        """Upload a guide (and mask) with parameters (t0, steps, samples, seed, ...) and options
        (priority, webhook_url, webhook_events); the job id. With an idempotency_key a retry
        of the same request returns the same job."""
        files = {"image": ("image", _read(image))}
        if mask is not None:
            files["mask"] = ("mask", _read(mask))
        data = {k: ",".join(v) if isinstance(v, list | tuple) else str(v)
                for k, v in parameters.items() if v is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._check(self.http.post("/v1/edits", data=data, files=files,
                                          headers=headers)).json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/edits/{job_id}")).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.delete(f"/v1/edits/{job_id}")).json()

    def models(self) -> list[dict[str, Any]]:
        return self._check(self.http.get("/v1/models")).json()["models"]

    def wait(self, job_id: str, poll: float = 0.5, timeout: float | None = None,
             progress: bool = True) -> dict[str, Any]:
        """Poll until the job ends; shows a progress bar of its sampler steps."""

        def shown(state: dict[str, Any]) -> tuple[int, int, str]:
            where = (state["status"] if state["position"] is None
                     else f"queued #{state['position'] + 1}")
            return state["progress"]["step"], state["progress"]["total"], where

        return _poll(lambda: self.status(job_id), shown, lambda s: s["status"] in TERMINAL,
                     f"job {job_id}", job_id[:8], "step", poll, timeout, progress)

    def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The webhook messages about an edit, with their delivery attempts."""
        return self._check(self.http.get(f"/v1/edits/{job_id}/deliveries")).json()["deliveries"]

    def webhook_secret(self) -> str:
        """The whsec_ secret that signs this API key's webhooks."""
        return self._check(self.http.get("/v1/webhook-secret")).json()["secret"]

    def rotate_webhook_secret(self) -> dict[str, Any]:
        return self._check(self.http.post("/v1/webhook-secret/rotate")).json()

    # --- batches -------------------------------------------------------------------------------

    def submit_batch(self, requests: list[dict[str, Any]], idempotency_key: str | None = None,
                     **options: Any) -> dict[str, Any]:
        """Submit requests ({custom_id, image, mask?, parameters...}; images as bytes or paths)
        with batch options (priority, webhook_url, webhook_events); the accepted batch (its id
        and each request's edit id)."""
        lines = []
        for request in requests:
            line = dict(request)
            for name in ("image", "mask"):
                if line.get(name) is not None:
                    line[name] = base64.b64encode(_read(line[name])).decode()
            lines.append(line)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {"requests": lines, **{k: v for k, v in options.items() if v is not None}}
        return self._check(self.http.post("/v1/batches", json=body, headers=headers)).json()

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/batches/{batch_id}")).json()

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        """One entry per ended request: custom_id, id, status, images, error."""
        text = self._check(self.http.get(f"/v1/batches/{batch_id}/results")).text
        return [json.loads(line) for line in text.splitlines() if line]

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        return self._check(self.http.delete(f"/v1/batches/{batch_id}")).json()

    def wait_batch(self, batch_id: str, poll: float = 1.0, timeout: float | None = None,
                   progress: bool = True) -> dict[str, Any]:
        """Poll until the batch ends; shows a progress bar over its requests."""

        def shown(state: dict[str, Any]) -> tuple[int, int, str]:
            counts = state["request_counts"]
            ended = counts["finished"] + counts["failed"] + counts["canceled"]
            return ended, counts["total"], f"{state['status']}, {counts['failed']} failed"

        return _poll(lambda: self.batch(batch_id), shown,
                     lambda s: s["status"] in BATCH_FINAL, f"batch {batch_id}", batch_id[:14],
                     "request", poll, timeout, progress)

    def download_batch(self, batch_id: str, out_dir: str | Path) -> list[Path]:
        """Save the images of every finished request as OUT_DIR/CUSTOM_ID-K.(png|webp) and all
        result lines as OUT_DIR/results.jsonl."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        results = self.batch_results(batch_id)
        paths = []
        for line in results:
            for k, link in enumerate(line["images"]):
                response = self._check(self.http.get(link))
                extension = EXTENSIONS.get(response.headers["content-type"], "png")
                path = out / f"{_safe_name(line['custom_id'])}-{k}.{extension}"
                path.write_bytes(response.content)
                paths.append(path)
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        return paths

    def image(self, job_id: str, index: int) -> bytes:
        return self._check(self.http.get(f"/v1/edits/{job_id}/images/{index}")).content

    def download(self, job_id: str, out_dir: str | Path, stem: str = "result") -> list[Path]:
        """Save every result image of a finished job as OUT_DIR/STEM-K.(png|webp)."""
        state = self.status(job_id)
        if state["status"] != "finished":
            raise ServiceError(409, f"job {job_id} is {state['status']}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        extension = state["parameters"]["output_format"]
        paths = []
        for k in range(len(state["links"]["images"])):
            path = out / f"{stem}-{k}.{extension}"
            path.write_bytes(self.image(job_id, k))
            paths.append(path)
        return paths


def _read(source: bytes | str | Path) -> bytes:
    return source if isinstance(source, bytes) else Path(source).read_bytes()


def _safe_name(custom_id: str) -> str:
    """A custom_id as a file name: path separators and other odd characters become '_'."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in custom_id).lstrip(".") or "_"


def _poll(fetch: Callable[[], dict[str, Any]],
          shown: Callable[[dict[str, Any]], tuple[int, int, str]],
          ended: Callable[[dict[str, Any]], bool], what: str, desc: str, unit: str,
          poll: float, timeout: float | None, progress: bool) -> dict[str, Any]:
    """Fetch a state until it has ended, with a progress bar of (done, total, note)."""
    from tqdm import tqdm

    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=1, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        while True:
            state = fetch()
            done, total, note = shown(state)
            if total:
                bar.total = total
                bar.update(done - bar.n)
            bar.set_postfix_str(note)
            if ended(state):
                return state
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{what} still {state['status']} after {timeout} s")
            time.sleep(poll)

"""A small Python client of the HTTP API: submit, status, wait (with a progress bar), download."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("finished", "failed", "canceled")


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
               **parameters: Any) -> str:
        """Upload a guide (and mask) with parameters (t0, steps, samples, seed, ...); the job id."""
        files = {"image": ("image", _read(image))}
        if mask is not None:
            files["mask"] = ("mask", _read(mask))
        data = {k: str(v) for k, v in parameters.items() if v is not None}
        return self._check(self.http.post("/v1/edits", data=data, files=files)).json()["id"]

    def status(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.get(f"/v1/edits/{job_id}")).json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._check(self.http.delete(f"/v1/edits/{job_id}")).json()

    def models(self) -> list[dict[str, Any]]:
        return self._check(self.http.get("/v1/models")).json()["models"]

    def wait(self, job_id: str, poll: float = 0.5, timeout: float | None = None,
             progress: bool = True) -> dict[str, Any]:
        """Poll until the job ends; shows a progress bar of its sampler steps."""
        from tqdm import tqdm

        deadline = None if timeout is None else time.monotonic() + timeout
        with tqdm(total=1, desc=job_id[:8], unit="step", disable=not progress,
                  dynamic_ncols=True) as bar:
            while True:
                state = self.status(job_id)
                step, total = state["progress"]["step"], state["progress"]["total"]
                if total:
                    bar.total = total
                    bar.update(step - bar.n)
                bar.set_postfix_str(state["status"] if state["position"] is None
                                    else f"queued #{state['position'] + 1}")
                if state["status"] in TERMINAL:
                    return state
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still {state['status']} after {timeout} s")
                time.sleep(poll)

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

"""A small typed Python client for the REST API; the ``hpo study`` commands use it.

It needs only ``hpo.core``'s schemas and httpx: no server, database driver or torch::

    with Client("http://127.0.0.1:8000", token) as client:
        study = client.create_study(yaml.safe_load(open("examples/causal_lm_lora.yaml")))
        print(client.best(study.name).params)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from hpo.core.errors import HPOError
from hpo.core.schemas import (
    BestConfigPublic,
    EnqueuePublic,
    Page,
    StudyPublic,
    StudySummary,
    TrialPublic,
)
from hpo.core.spec import StudySpec


class ApiError(HPOError):
    """The API answered with an error; ``str()`` is one line a person can act on."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {self._describe(detail)}")

    @staticmethod
    def _describe(detail: Any) -> str:
        if isinstance(detail, list):
            return "; ".join(
                f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg')}" for e in detail
            )
        return str(detail)


class Client:
    """``Client(url, token).create_study(spec)`` and friends.

    Args:
        url: Base URL of the service, e.g. ``http://127.0.0.1:8000``.
        token: A bearer token from ``hpo token create``; None when auth is disabled.
        http: Send the requests through this client instead (e.g. to an app in process).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = http or httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(0, f"cannot reach {self._http.base_url}: {exc}") from exc
        if response.is_error:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        return response

    def create_study(self, spec: StudySpec | dict[str, Any]) -> StudyPublic:
        body = spec.model_dump(mode="json") if isinstance(spec, StudySpec) else spec
        return StudyPublic.model_validate(self._call("POST", "/studies", json=body).json())

    def list_studies(self, *, offset: int = 0, limit: int = 50) -> Page[StudySummary]:
        params = {"offset": offset, "limit": limit}
        data = self._call("GET", "/studies", params=params).json()
        return Page[StudySummary].model_validate(data)

    def get_study(self, name: str) -> StudyPublic:
        return StudyPublic.model_validate(self._call("GET", f"/studies/{name}").json())

    def trials(
        self, name: str, *, offset: int = 0, limit: int = 50, state: str | None = None
    ) -> Page[TrialPublic]:
        params: dict[str, Any] = {"offset": offset, "limit": limit}
        if state:
            params["state"] = state
        data = self._call("GET", f"/studies/{name}/trials", params=params).json()
        return Page[TrialPublic].model_validate(data)

    def all_trials(self, name: str) -> list[TrialPublic]:
        found: list[TrialPublic] = []
        while True:
            page = self.trials(name, offset=len(found), limit=500)
            found.extend(page.data)
            if not page.data or len(found) >= page.count:
                return found

    def best(self, name: str) -> TrialPublic:
        return TrialPublic.model_validate(self._call("GET", f"/studies/{name}/best").json())

    def download_adapter(self, name: str, path: Path) -> Path:
        path.write_bytes(self._call("GET", f"/studies/{name}/best/adapter").content)
        return path

    def best_config(self, name: str) -> BestConfigPublic:
        """The best configuration as transformers / PEFT / TRL keyword arguments."""
        response = self._call("GET", f"/studies/{name}/best/config")
        return BestConfigPublic.model_validate(response.json())

    def download_logs(self, name: str, number: int, path: Path) -> Path:
        """A trial's TensorBoard logs, zipped."""
        path.write_bytes(self._call("GET", f"/studies/{name}/trials/{number}/tensorboard").content)
        return path

    def enqueue(self, name: str, params: dict[str, Any]) -> EnqueuePublic:
        response = self._call("POST", f"/studies/{name}/trials", json={"params": params})
        return EnqueuePublic.model_validate(response.json())

    def set_state(self, name: str, action: str) -> StudySummary:
        """``action`` is ``pause``, ``resume`` or ``stop``."""
        return StudySummary.model_validate(self._call("POST", f"/studies/{name}/{action}").json())

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/studies/{name}")

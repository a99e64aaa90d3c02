"""Answer every error under ``/api/`` in JSON, with debug on or off."""

import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.exceptions import BadRequest, PermissionDenied, SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponseBase, JsonResponse
from django.http.multipartparser import MultiPartParserError

from .exceptions import DATABASE_UNAVAILABLE

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
# The code for an error response that did not come from a view of ours.
STATUS_CODES = {400: "bad_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}

KEPT_HEADERS = ("Allow", "Retry-After")
# Exceptions that Django turns into a 4xx response of its own.
DJANGO_ANSWERS = (Http404, PermissionDenied, BadRequest, SuspiciousOperation, MultiPartParserError)

GetResponse = Callable[[HttpRequest], HttpResponseBase] | Callable[[HttpRequest], Awaitable[HttpResponseBase]]


class ApiErrorsMiddleware:
    """Turn what Django would answer in HTML under ``/api/`` into ``{"code", "detail"}``.

    DRF answers its own errors in JSON, but an unknown URL, a request Django
    refuses before any view (a bad Host, a body over the size limit) and an
    unhandled exception get Django's HTML pages, and with debug on a
    traceback. A database failure is a 503 ``unavailable``: the client may
    retry, and nothing was done.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self.is_async:
            return self._acall(request)
        return self._json(request, self.get_response(request))  # type: ignore[arg-type]

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        return self._json(request, await self.get_response(request))  # type: ignore[misc]

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponseBase | None:
        if not request.path.startswith(API_PREFIX) or isinstance(exception, DJANGO_ANSWERS):
            return None  # Django answers these itself (404, 403, 400), and __call__ makes that JSON.
        if isinstance(exception, DATABASE_UNAVAILABLE):
            logger.warning("%s %s: database unavailable: %s", request.method, request.path, exception)
            return _error("unavailable", "The database is unavailable; try again shortly.", 503)
        logger.error("%s %s failed", request.method, request.path, exc_info=exception)
        return _error("server_error", "The server failed to answer; this was logged.", 500)

    def _json(self, request: HttpRequest, response: HttpResponseBase) -> HttpResponseBase:
        if (
            response.status_code < 400
            or not request.path.startswith(API_PREFIX)
            or response.get("Content-Type", "").startswith("application/json")
        ):
            return response
        status = response.status_code
        try:
            detail = HTTPStatus(status).phrase
        except ValueError:
            detail = "Error"
        answer = _error(STATUS_CODES.get(status, "server_error" if status >= 500 else "bad_request"), detail, status)
        for header in KEPT_HEADERS:
            if header in response:
                answer[header] = response[header]
        return answer


def _error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)

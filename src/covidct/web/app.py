"""The FastAPI application: routes only; the work is in uploads, jobs, render and report.

``create_app(config, models)`` builds the app around already loaded models, so tests and
the CLI share it. Routes under /api need ``Authorization: Bearer <token>`` when the server
has a token; the page, /healthz and /docs do not (the page asks for the token). Every answer
carries the security headers of :mod:`.headers`; finished jobs older than the retention
period are deleted at start-up and then hourly.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
from contextlib import asynccontextmanager
from typing import Any, Sequence

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..constants import DISCLAIMER
from .config import ServeConfig
from .docs import render_docs
from .headers import SecurityHeaders
from .worker import DONE, FAILED, QUEUED, RUNNING, Busy, JobRunner, JobStore, ModelSet
from .page import render_page
from .render import Renderer, RenderError
from .result import display_of
from .scan_report import scan_report
from .storage import SWEEP_INTERVAL_S, expired_before, make_private, remove_job_files
from .uploads import UploadError, save_upload, size_limit_text

log = logging.getLogger("covidct.web")

#: Multipart framing and form fields on top of the files themselves.
_FORM_SLACK = 1024 * 1024


class _TooLarge(Exception):
    pass


class UploadLimit:
    """ASGI middleware: answer 413 for upload bodies over the limit before they are stored.

    A declared Content-Length over the limit is refused without reading the body; a body
    without one (chunked) is counted as it arrives and cut off at the limit.
    """

    def __init__(self, app, max_bytes: int, slack: int = 0):
        self.app = app
        self.limit = max_bytes  # as the user set it, for the message
        self.max_bytes = max_bytes + slack

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await _too_large(send, self.limit)
        seen = 0
        exceeded = started = False

        async def counting_receive():
            nonlocal seen, exceeded
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                exceeded = True
                raise _TooLarge()
            return message

        async def guarded_send(message):
            # The framework may turn the interrupted body into its own 400: answer 413 instead.
            nonlocal started
            if exceeded:
                if not started:
                    started = True
                    await _too_large(send, self.limit)
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _TooLarge:
            if not started:
                await _too_large(send, self.limit)


async def _too_large(send, limit: int) -> None:
    response = JSONResponse({"detail": size_limit_text(limit)}, status_code=413)
    await response({"type": "http"}, None, send)


def create_app(config: ServeConfig, models: Sequence[Any]) -> FastAPI:
    model_set = ModelSet(models)
    # Upload folders of a previous process belong to jobs that can no longer finish.
    shutil.rmtree(config.work_dir, ignore_errors=True)
    for folder in (config.data_dir, config.results_dir, config.work_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = JobStore(config.database)
    make_private(config.data_dir)
    interrupted = store.fail_unfinished()
    if interrupted:
        log.warning("%d job(s) left unfinished by the last server process marked failed", interrupted)
    runner = JobRunner(config, store, model_set)
    renderer = Renderer(config.results_dir, model_set)

    def forget(job_id: str) -> None:
        store.delete(job_id)
        renderer.forget(job_id)
        remove_job_files(config.results_dir, job_id)

    def expire() -> int:
        """Delete the finished jobs past the retention period; how many."""
        cutoff = expired_before(config.keep_days)
        old = [] if cutoff is None else store.finished_before(cutoff)
        for job_id in old:
            forget(job_id)
        if old:
            log.info("deleted %d job(s) finished more than %g day(s) ago", len(old), config.keep_days)
        return len(old)

    expire()

    async def expire_hourly() -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            try:
                await run_in_threadpool(expire)
            except Exception:  # a failed sweep must not stop the next one
                log.exception("deleting old jobs failed")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        sweeper = asyncio.create_task(expire_hourly()) if config.keep_days > 0 else None
        yield
        if sweeper is not None:
            sweeper.cancel()
        runner.shutdown()

    # No Swagger UI: it loads its scripts from a CDN, which the policy (and offline use) forbids.
    app = FastAPI(title="covidct", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None, description=f"COVID-19 detection in chest CT. {DISCLAIMER}")
    app.state.config, app.state.store, app.state.runner = config, store, runner
    app.state.models, app.state.renderer = model_set, renderer
    app.add_middleware(UploadLimit, max_bytes=config.max_upload_bytes, slack=_FORM_SLACK)
    app.add_middleware(SecurityHeaders)  # outermost: the 413 answers get the headers too

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # The multipart parser stops at the (max_slices + 1)-th file with its own 400.
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            return JSONResponse({"detail": f"more than the {config.max_slices} slices accepted "
                                           "were uploaded"}, status_code=422)
        return await http_exception_handler(request, exc)

    api = APIRouter(prefix="/api", dependencies=[Depends(_token_check(config.token))])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(render_page(token_required=bool(config.token),
                                        show_phi=config.show_phi))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(render_docs(app.openapi()))

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness, the models served and the queue's length (no token needed)."""
        return {"status": "ok", "version": __version__, "models": sorted(model_set.models),
                "queued": store.count(QUEUED), "running": store.count(RUNNING)}

    @api.get("/models", tags=["service"])
    def list_models() -> dict[str, Any]:
        """Provenance of every model served (file, version, training data, synthetic or not)."""
        return {"models": model_set.info(), "disclaimer": DISCLAIMER}

    # Starlette's multipart parser stops at 1000 files by default: follow --max-slices instead.
    @api.post("/scans", status_code=202, tags=["scans"],
              form_limits={"max_files": config.max_slices + 1, "max_fields": 16}, responses={
        202: {"description": "queued: poll the url it returns"},
        401: {"description": "missing or wrong bearer token (servers with a token)"},
        413: {"description": "upload larger than the size limit, or a picture larger than "
                             "the per-slice pixel limit"},
        422: {"description": "refused upload: file type, slice count, unsafe or broken zip, "
                             "corrupt picture or NIfTI, mixed files"},
        503: {"description": "too many scans waiting; retry later"}})
    async def upload_scan(files: list[UploadFile] = File(
            ..., description="a .zip of a DICOM series, a .nii/.nii.gz file, or PNG/JPG slices")
    ) -> dict[str, Any]:
        """Queue a scan; answers at once with the job id to poll."""
        try:
            upload = await run_in_threadpool(
                save_upload, [(f.filename or "", f.file) for f in files], config.work_dir,
                max_bytes=config.max_upload_bytes, max_slices=config.max_slices,
                max_unpacked_bytes=config.max_unpacked_bytes, max_pixels=config.max_slice_pixels)
        except UploadError as exc:
            raise HTTPException(exc.status, exc.message) from None
        finally:
            for f in files:
                await f.close()
        try:
            job_id = runner.submit(upload)
        except Busy as exc:
            shutil.rmtree(upload.folder, ignore_errors=True)
            raise HTTPException(503, exc.message, headers={"Retry-After": "60"}) from None
        return {"id": job_id, "status": QUEUED, "url": f"/api/scans/{job_id}"}

    def _job(job_id: str) -> dict[str, Any]:
        job = store.get(job_id) if job_id.isalnum() else None
        if job is None:
            raise HTTPException(404, "no such scan job")
        result = job.get("result")
        if isinstance(result, dict) and "display" not in result:  # stored by an earlier version
            result["display"] = display_of(result.get("methods") or {}, model_set)
        return job

    def _finished(job_id: str) -> dict[str, Any]:
        job = _job(job_id)
        if job["status"] != DONE:
            raise HTTPException(409, f"scan job is {job['status']}, no result")
        return job["result"]

    @api.get("/scans/{job_id}", tags=["scans"])
    def get_scan(job_id: str) -> dict[str, Any]:
        """Status (queued, running with its stage, done, failed with the reason) and result."""
        job = _job(job_id)
        job["disclaimer"] = DISCLAIMER
        return job

    @api.get("/scans/{job_id}/result.json", tags=["scans"])
    def download_result(job_id: str) -> JSONResponse:
        """The finished result as a JSON file download."""
        return JSONResponse(_finished(job_id), headers=_attachment(f"covidct-{job_id[:8]}.json"))

    @api.get("/scans/{job_id}/report.html", tags=["scans"])
    def download_report(job_id: str) -> HTMLResponse:
        """A self-contained HTML report of the finished result (a file download)."""
        result = _finished(job_id)
        html = scan_report(result, renderer, show_phi=config.show_phi)
        return HTMLResponse(html, headers=_attachment(f"covidct-{job_id[:8]}-report.html"))

    @api.get("/scans/{job_id}/slices/{k}.png", tags=["scans"], responses={
        200: {"content": {"image/png": {}}, "description": "the slice picture"},
        404: {"description": "no such job or slice, or no model for that overlay"},
        409: {"description": "the job has not finished"},
        422: {"description": "unknown overlay or window"}})
    def slice_picture(job_id: str, k: int,
                      overlay: str = Query("none", description="none, gradcam or infection"),
                      window: str = Query("lung", description="lung or mediastinum (HU scans)"),
                      ) -> Response:
        """Slice ``k`` (0-based, scan order) in a display window, optionally with a heat map."""
        result = _finished(job_id)
        try:
            png = renderer.slice_png(job_id, k, result, overlay=overlay, window=window)
        except RenderError as exc:
            raise HTTPException(exc.status, exc.message) from None
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @api.delete("/scans/{job_id}", tags=["scans"])
    def delete_scan(job_id: str) -> dict[str, Any]:
        """Forget a finished scan: its row, result and stored slices."""
        job = _job(job_id)
        if job["status"] not in (DONE, FAILED):
            raise HTTPException(409, f"scan job is {job['status']}; delete it when it has finished")
        forget(job_id)
        return {"id": job_id, "deleted": True}

    app.include_router(api)
    return app


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


def _token_check(token: str | None):
    import secrets

    expected = (token or "").encode("utf-8")

    def check(request: Request) -> None:
        if not token:
            return
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        # Compared as bytes: a header with non-ASCII characters (decoded as Latin-1) is a
        # wrong token, not a TypeError from compare_digest.
        sent = value.strip().encode("latin-1", "replace")
        if scheme.lower() != "bearer" or not secrets.compare_digest(sent, expected):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    return check

"""`covidct serve`: a web page and HTTP API for clinicians (research use only).

- :mod:`.config`: the server's settings (limits, folders, token) in one dataclass.
- :mod:`.uploads`: checks an upload before any work is queued (type, size, slice count, zip
  safety) and stores it under neutral names in a private work folder.
- :mod:`.jobs`: the SQLite job/result store and the bounded worker pool that runs predictions.
- :mod:`.render`: slice pictures with display windows and Grad-CAM / infection-map overlays.
- :mod:`.storage`: the data folder at rest (one server per folder, 0600/0700, retention).
- :mod:`.headers`: the security headers and Content-Security-Policy of every answer.
- :mod:`.app`: the FastAPI routes (thin: each calls the modules above); :mod:`.page` the page.

FastAPI and uvicorn are imported only here, so the rest of covidct does not need them.
"""

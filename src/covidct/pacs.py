"""A study from the PACS by accession number: ``covidct predict pacs://AE@HOST:PORT/ACCESSION``.

C-FIND (Study Root, STUDY level) finds the study with that accession number; C-GET retrieves
its CT instances over the same association into a private temporary folder (0700, files
0600), removed afterwards. C-GET needs no route back from the PACS to covidct (C-MOVE would),
but the PACS must know covidct's AE title (``--calling-ae``, default COVIDCT) and allow it to
query and retrieve. The accession number is never written to logs or error messages.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .errors import ScanError

log = logging.getLogger(__name__)
# pynetdicom logs C-FIND identifiers (the accession number, UIDs) at INFO.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

PREFIX = "pacs://"
_URL = re.compile(r"^pacs://(?P<ae>[^@/]{1,16})@(?P<host>[^:/]+):(?P<port>\d{1,5})/(?P<acc>[^/]{1,16})$")
#: Pending C-FIND / C-GET statuses (PS3.4 C.4).
_PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True)
class PacsStudy:
    ae_title: str
    host: str
    port: int
    accession: str

    def where(self) -> str:
        """The PACS, for messages (without the accession number)."""
        return f"{self.ae_title}@{self.host}:{self.port}"


def is_pacs_url(text: str | os.PathLike) -> bool:
    return str(text).startswith(PREFIX)


def parse_pacs_url(text: str) -> PacsStudy:
    match = _URL.match(str(text))
    if not match:
        raise ScanError("a PACS study is named pacs://AE@HOST:PORT/ACCESSION (e.g. "
                        "pacs://ORTHANC@pacs.example.org:4242/A123456)")
    return PacsStudy(match["ae"], match["host"], int(match["port"]), match["acc"])


def _ct_storage_classes() -> list[str]:
    from pynetdicom.sop_class import CTImageStorage, EnhancedCTImageStorage

    return [CTImageStorage, EnhancedCTImageStorage]


@contextlib.contextmanager
def retrieved_study(url: str, calling_ae: str = "COVIDCT", timeout_s: float = 120.0) -> Iterator[Path]:
    """A temporary folder holding the CT instances of the study ``url`` names."""
    from pydicom.dataset import Dataset
    from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, build_role, evt
    from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                      StudyRootQueryRetrieveInformationModelGet)

    study = parse_pacs_url(url)
    with tempfile.TemporaryDirectory(prefix="covidct-pacs-") as tmp:  # mkdtemp: 0700
        folder = Path(tmp)
        received = []

        def on_store(event):
            path = folder / f"{len(received):06d}.dcm"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(event.encoded_dataset())
            received.append(path)
            return 0x0000

        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        storage = _ct_storage_classes()
        for uid in storage:
            ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
        assoc = ae.associate(study.host, study.port, ae_title=study.ae_title,
                             ext_neg=[build_role(uid, scp_role=True) for uid in storage],
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
        if not assoc.is_established:
            raise ScanError(f"could not open an association with {study.where()} (is covidct's "
                            f"AE title {calling_ae} known to the PACS?)")
        try:
            uid = _find_study(assoc, study, Dataset, StudyRootQueryRetrieveInformationModelFind)
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = uid
            final = None
            for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet):
                if status and int(status.Status) not in _PENDING:
                    final = int(status.Status)
        finally:
            assoc.release()
        if not received:
            reason = f"status 0x{final:04X}" if final is not None else "no answer"
            raise ScanError(f"{study.where()} sent no CT image of that study ({reason})")
        log.info("retrieved %d CT instance(s) from %s", len(received), study.where())
        yield folder


def _find_study(assoc, study: PacsStudy, Dataset, model) -> str:
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.AccessionNumber = study.accession
    query.StudyInstanceUID = ""
    matches = []
    for status, identifier in assoc.send_c_find(query, model):
        if status is None:
            raise ScanError(f"{study.where()} did not answer the query")
        code = int(status.Status)
        if code in _PENDING and identifier is not None:
            matches.append(str(identifier.get("StudyInstanceUID", "")))
        elif code not in _PENDING and code != 0x0000:
            raise ScanError(f"{study.where()} refused the query (status 0x{code:04X})")
    matches = [m for m in matches if m]
    if not matches:
        raise ScanError(f"{study.where()} has no study with that accession number")
    if len(set(matches)) > 1:
        raise ScanError(f"{study.where()} has {len(set(matches))} studies with that accession "
                        "number; covidct takes one")
    return matches[0]

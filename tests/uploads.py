"""Hostile upload payloads shared by the unit and end-to-end security tests."""

from __future__ import annotations

import io
import zipfile

import torch


def zip_bomb_state_dict(inflated_bytes: int) -> bytes:
    """A torch.save archive whose tensor data entry is deflated: tiny on the wire, huge when read."""
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(inflated_bytes // 4)}, buffer)
    source = zipfile.ZipFile(io.BytesIO(buffer.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as bomb:
        for info in source.infolist():
            bomb.writestr(info.filename, source.read(info.filename))
    return out.getvalue()

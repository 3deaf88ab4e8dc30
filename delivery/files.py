"""The ``file`` backends: each message becomes a file in a folder, nothing leaves the node.

The embedded default (``email.backend: file``, ``sms.backend: file``) writes
``<data_dir>/outbox/<message_id>.eml`` (a full RFC 5322 message that any mail client
opens) and ``<message_id>.txt`` (``To:`` line, blank line, SMS text). Writes are atomic
(temporary file, fsync, rename, fsync of the folder), so a reader never sees half a
message, and idempotent by ``message_id``: a re-send after a crash finds the file and
returns the same receipt instead of writing a second message.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from delivery.channel import ChannelKind, OutgoingMessage, Receipt, to_email
from delivery.errors import DeliveryError
from store.content import DIR_MODE


class FileChannel:
    """Writes email (``kind="email"``) or SMS (``kind="sms"``) messages into ``folder``."""

    name = "file"

    def __init__(
        self,
        kind: ChannelKind,
        folder: Path,
        *,
        sender: str = "courier@localhost",
        sender_name: str = "",
    ) -> None:
        self.kind: ChannelKind = kind
        self.folder = folder
        self._sender = sender
        self._sender_name = sender_name

    def path_for(self, message: OutgoingMessage) -> Path:
        """Where ``message`` is (or will be) written."""
        suffix = ".eml" if self.kind == "email" else ".txt"
        return self.folder / f"{message.message_id}{suffix}"

    async def send(self, message: OutgoingMessage) -> Receipt:
        """Write ``message`` unless its file exists; raises DeliveryError (not permanent)
        when the folder is not writable (a full disk is an admin's fix, not the
        message's fault)."""
        if message.kind != self.kind:
            raise ValueError(f"this file channel writes {self.kind} messages only")
        existing = await self.lookup(message)
        if existing is not None:
            return existing
        try:
            await asyncio.to_thread(self._write, message)
        except OSError as exc:
            raise DeliveryError(
                f"cannot write into the outbox folder {self.folder}: {exc.strerror}; "
                "check its permissions and free space",
                permanent=False,
            ) from None
        written = await self.lookup(message)
        assert written is not None  # just renamed into place
        return written

    async def lookup(self, message: OutgoingMessage) -> Receipt | None:
        """The receipt of an earlier write of ``message``, if its file exists; its
        ``accepted_at`` is the file's mtime, so every call returns the same receipt."""
        path = self.path_for(message)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return None
        return Receipt(
            provider_id=message.message_id,
            channel=self.name,
            accepted_at=datetime.fromtimestamp(mtime, UTC),
        )

    async def aclose(self) -> None:
        """Nothing to release."""

    def _render(self, message: OutgoingMessage) -> bytes:
        if self.kind == "email":
            return to_email(message, sender=self._sender, sender_name=self._sender_name).as_bytes()
        return f"To: {message.to}\nMessage-ID: {message.message_id}\n\n{message.text}".encode()

    def _write(self, message: OutgoingMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
        final = self.path_for(message)
        # The temporary name starts with a dot so a reader globbing *.eml skips it.
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".tmp-", suffix=final.suffix)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self._render(message))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power cut
        finally:
            os.close(dir_fd)

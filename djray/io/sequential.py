"""A read-only file over one object that reads it in few large requests and resumes after transient failures.

Why: a tar parser reads 10 KiB at a time and a Parquet reader one column chunk at a time; through a random-access S3
file each of those reads is its own ranged GET (~6 per image of a WebDataset shard), paying S3's first-byte latency
and per-request price every time. Here the object is fetched in windows of `read_ahead` bytes (8 MiB; the whole
object when it is smaller), and while a sequential reader consumes one window the next is fetched in the background,
so the reader waits for the store at most once per shard. A Parquet reader's footer-then-column-chunks pattern works
too: the file is seekable, a seek elsewhere fetches just the bytes asked for (a column projection does not download
the columns it skips), and a read of a whole window or more is one request of exactly that range.

Build it with `djray.io.fs.open_sequential`. Retry semantics: djray.io.errors.
"""

from __future__ import annotations

import io
import time
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow.fs as pafs

from djray.io.errors import TransientStorageError, backoff_s, is_transient, one_line

READ_AHEAD_BYTES = 8 << 20


class SequentialFile(io.RawIOBase):
    def __init__(self, fs: pafs.FileSystem, path: str, name: str, read_ahead: int, attempts: int):
        super().__init__()
        self.name = name
        self._fs, self._path, self._read_ahead, self._attempts = fs, path, max(1, read_ahead), max(1, attempts)
        self._file = None  # pyarrow random-access file, reopened after a failure
        self._pos = self._last_end = 0  # position; where the last read ended
        self._win_start, self._win = 0, memoryview(b"")
        self._ahead: tuple[int, Future] | None = None  # (start, fetch of the window after the current one)
        self._pool: ThreadPoolExecutor | None = None
        self._size = self._opened_size()

    # ---- io.RawIOBase ------------------------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def size(self) -> int:
        return self._size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def read(self, n: int | None = -1) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        left = self._size - self._pos
        n = left if n is None or n < 0 else max(0, min(n, left))
        if n >= self._read_ahead and not self._in_window(self._pos):
            self._settle()
            data = self._fetch(self._pos, n)  # a large range (a pre-buffered column chunk): one request, as asked
            self._pos += n
            return data
        out = []
        while n > 0:
            if not self._in_window(self._pos):
                self._load(self._pos, n)
            rel = self._pos - self._win_start
            take = min(n, len(self._win) - rel)
            out.append(self._win[rel: rel + take])
            self._pos += take
            n -= take
        self._last_end = self._pos
        return b"".join(out)

    def close(self) -> None:
        if not self.closed:
            self._settle()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            self._drop_file()
            self._win = memoryview(b"")
        super().close()

    # ---- windows ---------------------------------------------------------------------------------------------------

    def _in_window(self, pos: int) -> bool:
        return self._win_start <= pos < self._win_start + len(self._win)

    def _load(self, pos: int, n: int) -> None:
        """Make a window holding `pos` (and the `n` bytes asked for) current, the prefetched one if it starts there.

        A small object is fetched whole. Sequential reading — this read starts where the last one ended, or skips
        forward less than a window (reading through the gap is cheaper than another request) — gets a whole
        read-ahead window, and when it continues the previous window the next one is fetched in the background.
        A seek elsewhere (a Parquet footer, the columns of a projection after a long skip) fetches the bytes asked.
        """
        contiguous = pos == self._win_start + len(self._win)
        if self._size <= self._read_ahead:
            start, length = 0, self._size  # a small object: all of it, in one request
        elif 0 <= pos - self._last_end < self._read_ahead:
            start, length = pos, min(self._read_ahead, self._size - pos)
        else:
            start, length = pos, n
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == start:
            data = ahead[1].result()  # raises what the background fetch raised
        else:
            if ahead is not None:
                _wait_quietly(ahead[1])  # never two requests on the file at once
            data = self._fetch(start, length)
        self._win_start, self._win = start, memoryview(data)
        following = start + length
        if contiguous and length == self._read_ahead and following < self._size:
            self._pool = self._pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="djray-read-ahead")
            size = min(self._read_ahead, self._size - following)
            self._ahead = (following, self._pool.submit(self._fetch, following, size))

    def _settle(self) -> None:
        if self._ahead is not None:
            _wait_quietly(self._ahead[1])
            self._ahead = None

    # ---- requests ----------------------------------------------------------------------------------------------

    def _opened_size(self) -> int:
        failures = 0
        while True:
            try:
                return self._open().size()
            except OSError as e:
                failures = self._failed(e, failures, "open")

    def _fetch(self, start: int, length: int) -> bytes:
        """Bytes [start, start + length): exactly that many, or an exception."""
        parts, offset, end, failures = [], start, start + length, 0
        while offset < end:
            try:
                data = self._open().read_at(end - offset, offset)
                if not data:
                    raise TransientStorageError(f"body ended at byte {offset} of {self._size}")
            except OSError as e:
                failures = self._failed(e, failures, f"read at byte {offset} of {self._size}")
                continue
            parts.append(data)
            offset += len(data)  # a short body: the loop asks for the rest, from here
        return b"".join(parts)

    def _failed(self, e: OSError, failures: int, what: str) -> int:
        """After a failed request: raise unless it is transient and attempts are left; else back off, reopen."""
        if not is_transient(e):
            raise e
        failures += 1
        self._drop_file()
        if failures >= self._attempts:
            raise TransientStorageError(f"{self.name}: {what} failed after {failures} attempt(s): {one_line(e)}") from e
        time.sleep(backoff_s(failures))
        return failures

    def _open(self):
        if self._file is None:
            self._file = self._fs.open_input_file(self._path)
        return self._file

    def _drop_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def _wait_quietly(future: Future) -> None:
    """Wait for a background fetch nobody needs any more; its failure does not matter."""
    try:
        future.result()
    except Exception:  # noqa: BLE001 - the window was not needed
        pass

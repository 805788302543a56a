"""Background decoding of many videos at once, for corpus extraction (`streamformer_jax.corpus`).

    pool = DecodePool(open_reader, workers=4)
    job = pool.submit(path)          # starts decoding in the background (frames buffered, bounded)
    item = pool.next(job)            # (timestamp, uint8 frame), or END; raises the video's VideoReadError
    pool.close()
    pool.waited_s                    # seconds `next` spent waiting for frames (or decoding them, workers=0)

`workers` threads serve every submitted video a few frames at a time (PyAV releases the GIL while it decodes
and scales), so any number of videos can be in flight with a fixed number of threads and none of them can
starve the others: a thread never blocks on a full buffer, it moves on to the video that needs frames most
(the ones the consumer is waiting for first, then the fullest-first prefetch). Each video's frames arrive in
order and unchanged whatever the number of workers; `workers=0` decodes in the caller's thread.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable

END = object()  # `next` returns this after a video's last frame


class DecodeJob:
    """One video in flight: buffered frames, then the end or the error."""

    def __init__(self, path, order: int):
        self.path, self.order = path, order
        self.frames: collections.deque = collections.deque()
        self.reader = None
        self.iterator = None
        self.done = False
        self.error: BaseException | None = None
        self.busy = False  # a worker is decoding it right now
        self.wanted = False  # the consumer waits for (or will soon ask) this job's frames
        self.dropped = False


class DecodePool:
    """Decodes submitted videos in `workers` threads; see the module doc.

    open_reader(path) -> an iterable of (timestamp, frame) that also has `close()` (a `VideoReader`);
    opening and iterating may raise the errors that `next` re-raises for that video.
    capacity: frames buffered per video; chunk: frames decoded per turn of a worker.
    """

    def __init__(self, open_reader: Callable, workers: int, capacity: int = 32, chunk: int = 4):
        self._open, self.capacity, self.chunk = open_reader, max(1, int(capacity)), max(1, int(chunk))
        self._jobs: list[DecodeJob] = []
        self._cond = threading.Condition()
        self._stopped = False
        self._order = 0
        self.waited_s = 0.0  # how long the consumer waited for frames: the decoding that was not overlapped
        self._threads = [threading.Thread(target=self._work, name=f"decode-{i}", daemon=True)
                         for i in range(int(workers))]
        for t in self._threads:
            t.start()

    def submit(self, path) -> DecodeJob:
        with self._cond:
            job = DecodeJob(path, self._order)
            self._order += 1
            self._jobs.append(job)
            self._cond.notify_all()
        return job

    def next(self, job: DecodeJob):
        """The video's next (timestamp, frame), or END; raises the error that stopped its decoding."""
        if not self._threads:
            return self._next_inline(job)
        with self._cond:
            job.wanted = True
            self._cond.notify_all()
            if not job.frames and not job.done:
                start = time.perf_counter()
                while not job.frames and not job.done:
                    self._cond.wait()
                self.waited_s += time.perf_counter() - start
            if job.frames:
                item = job.frames.popleft()
                self._cond.notify_all()  # room in the buffer
                return item
        return self._finish(job)

    def drop(self, job: DecodeJob) -> None:
        """Forget a job (finished, failed or abandoned): its reader is closed once no worker holds it."""
        with self._cond:
            job.dropped = True
            if job in self._jobs:
                self._jobs.remove(job)
            if not job.busy:
                self._close_reader(job)

    def close(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()
        for job in self._jobs:
            self._close_reader(job)
        self._jobs.clear()

    # -- internals --------------------------------------------------------------------------------------------
    def _finish(self, job: DecodeJob):
        if job.error is not None:
            raise job.error
        return END

    def _next_inline(self, job: DecodeJob):
        if not job.frames and not job.done:
            start = time.perf_counter()
            self._decode(job, 1)
            self.waited_s += time.perf_counter() - start
        if job.frames:
            return job.frames.popleft()
        return self._finish(job)

    def _pick(self) -> DecodeJob | None:
        """The job that needs frames most: wanted ones with the emptiest buffer first, then in submit order."""
        best = None
        for job in self._jobs:
            if job.busy or job.done or len(job.frames) >= self.capacity:
                continue
            key = (not job.wanted, len(job.frames) if job.wanted else 0, job.order)
            if best is None or key < best[0]:
                best = (key, job)
        return None if best is None else best[1]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (job := self._pick()) is None:
                    self._cond.wait()
                if self._stopped:
                    return
                job.busy = True
            self._decode(job, self.chunk)

    def _decode(self, job: DecodeJob, count: int) -> None:
        """Decodes up to `count` frames of `job` outside the lock, then publishes them."""
        items, done, error = [], False, None
        try:
            if job.iterator is None:
                job.reader = self._open(job.path)
                job.iterator = iter(job.reader)
            for _ in range(count):
                items.append(next(job.iterator))
        except StopIteration:
            done = True
        except Exception as err:  # noqa: BLE001 - handed to the consumer, which reports the video as failed
            done, error = True, err
        with self._cond:
            job.frames.extend(items)
            job.done, job.busy = done, False
            if error is not None:
                job.error = error
            if done or job.dropped:
                self._close_reader(job)
            self._cond.notify_all()

    @staticmethod
    def _close_reader(job: DecodeJob) -> None:
        """Closes the reader once (after its end, its error, or a drop); the caller holds the lock or the job."""
        if job.reader is not None:
            if hasattr(job.reader, "close"):
                job.reader.close()
            job.reader, job.iterator = None, None

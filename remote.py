"""
Requests to OpenAI-compatible servers (the KL reference, the red LM), under one retry policy: a connection error, a
timeout, 408, 409, 429, a 5xx or an empty reply is retried with backoff, and the whole request, its retries
included, is given up at a total deadline the user sets (kl_timeout, --red_timeout). The openai client's timeouts are
per read, so a server that sends a byte every few seconds would hold a request for good; here an attempt not
answered in full in time is abandoned (its thread, a daemon, is left to the server's next byte and its answer
dropped) and counts as a timeout.
"""
import os
import threading
import time

TIMEOUT_S = 600.0  # the default deadline of a request, its retries included
RETRIES = 6  # retries of a failed request: 7 attempts
BACKOFF_S = 1.0  # waits of 1, 2, 4, ... s between attempts
ATTEMPT_S = 120.0  # an attempt not answered in full in this time is abandoned and retried
RETRIED_STATUS = (408, 409, 429)  # and every 5xx


class RemoteError(Exception):
    """A request that failed for good, in one line that names the server."""


class DeadlineExceeded(Exception):
    pass


class EmptyReply(Exception):
    """A reply with no completions: asked again, as a failed request is."""


def openai_client(base_url):
    """An openai client for a server (OpenAI's own without base_url) that does not retry by itself: call does."""
    import openai
    return openai.OpenAI(base_url=base_url or None, api_key=os.environ.get('OPENAI_API_KEY', 'none'), max_retries=0,
                         timeout=ATTEMPT_S)


def call(request, where, timeout, retries=RETRIES):
    """request() (an openai client call) under the retry policy above, within `timeout` seconds in all; RemoteError
    once it has failed retries + 1 times, or the deadline has passed, or the server refused it (a 4xx but 408, 409
    and 429: asking again would not help)."""
    import openai
    deadline = time.monotonic() + timeout
    for attempt in range(retries + 1):
        try:
            return with_deadline(request, min(ATTEMPT_S, deadline - time.monotonic()))
        except (openai.APIConnectionError, openai.InternalServerError, DeadlineExceeded, EmptyReply) as e:
            error = e  # APITimeoutError is an APIConnectionError
        except openai.APIStatusError as e:
            if e.status_code not in RETRIED_STATUS:
                raise RemoteError(f"{where}: {type(e).__name__}: {first_line(e)}") from None
            error = e
        wait = BACKOFF_S * 2 ** attempt
        out_of_time = time.monotonic() + wait >= deadline
        if attempt == retries or out_of_time:
            last = f"{type(error).__name__}: {first_line(error)}"
            raise RemoteError(f"{where}: no complete answer within {timeout:g} s ({attempt + 1} attempt"
                              f"{'s' if attempt else ''}; the last: {last})" if out_of_time else
                              f"{where}: failed {attempt + 1} times ({last})") from None
        time.sleep(wait)


def first_line(error):
    return str(error).split('\n')[0][:300]


def with_deadline(fn, seconds):
    """fn() if it returns (or raises) within seconds; DeadlineExceeded otherwise."""
    outcome = {}

    def target():
        try:
            outcome['value'] = fn()
        except BaseException as e:  # handed to the caller's thread
            outcome['error'] = e

    thread = threading.Thread(target=target, daemon=True, name='phf-request')
    thread.start()
    thread.join(max(seconds, 0))
    if thread.is_alive():
        raise DeadlineExceeded(f"no complete answer within {seconds:.3g} s")
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']

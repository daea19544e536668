"""
OpenAI-compatible servers (the KL reference, the red LM): each request under a total deadline. The openai client's
timeouts are per read, so a server that sends a byte every few seconds would hold a request for good; here a request
not answered in full within the deadline is abandoned (its thread, a daemon, is left to the server's next byte and
its answer dropped) and counts as a timeout, which the callers retry and then report.
"""
import threading


class DeadlineExceeded(Exception):
    pass


def call_with_deadline(fn, seconds):
    """fn() if it returns (or raises) within seconds; DeadlineExceeded otherwise."""
    outcome = {}

    def target():
        try:
            outcome['value'] = fn()
        except BaseException as e:  # handed to the caller's thread
            outcome['error'] = e

    thread = threading.Thread(target=target, daemon=True, name='phf-request')
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise DeadlineExceeded(f"no complete answer within {seconds:g} s")
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']

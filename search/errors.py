"""Errors the CLI shows as one line (``Error: ...``) with a non-zero exit and no traceback."""


class UserError(Exception):
    """Bad input or a state the user must fix: the message names the option or file and the problem."""


class NoStudyStorage(UserError):
    """A storage asked for a study that holds none: no Optuna tables (another program's database, an empty file
    or database). A read-only command says so and creates nothing there."""


# cuBLAS and cuDNN report the GPU running out of memory as their own error (a RuntimeError, not
# torch.OutOfMemoryError) when a handle or workspace cannot be allocated, and CUDA itself as torch.AcceleratorError
# (a RuntimeError) "CUDA error: out of memory" when memory outside PyTorch's allocator cannot be had; HW04-Bench's
# recorder met CUBLAS_STATUS_ALLOC_FAILED (call 13) and the CUDA error (call 14) at a trial's first step beside
# five other workers on one card (BENCHMARKS.md).
ALLOCATION_FAILURES = ("CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def out_of_gpu_memory(err: BaseException) -> bool:
    """``err`` says the GPU ran out of memory: PyTorch's allocator (``torch.OutOfMemoryError``), cuBLAS's /
    cuDNN's allocation failure, or CUDA's own (``ALLOCATION_FAILURES``)."""
    import torch  # here, not at the top: the CLI imports this module before it needs torch

    return isinstance(err, torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and any(code in str(err) for code in ALLOCATION_FAILURES))


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial ends as failed with this reason."""


class Terminated(KeyboardInterrupt):
    """SIGTERM reached ``search run``: unwinds like Ctrl-C (the running trial ends FAIL, ``ended: interrupted``),
    then the command exits with one line and code 143 (128 + SIGTERM)."""


class Stopped(Exception):
    """``search run`` stopped by a signal, after it recorded the running trial and printed its summary and
    the command that resumes it, or ``search finalize`` stopped by one (the message names the step and the
    checkpoint kept): one ``Error:`` line and exit code 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code

"""The one base class of the errors a user can fix, and the exception a SIGTERM turns into.

Every refusal of bad input (a file, an argument, a data set, a DICOM series) raises a subclass of
``UserInputError`` whose message names the thing and the problem; ``nnunet-ras`` prints it as one line and exits
with code 2. Anything else that escapes a command is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """Input or arguments the user can correct; the message names the file, folder or option and the problem."""


class DatasetError(UserInputError):
    """A data set, image or label file that cannot be used; the message names the file and the problem.

    Raised by the package's reader (``_io.read_image``), its data set checks and its id claim.
    """


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM, so that ``finally`` and ``except
    BaseException`` blocks remove temporary output exactly as they do for Ctrl-C (KeyboardInterrupt)."""

    def __init__(self, signal_number: int):
        super().__init__(f"terminated by signal {signal_number}")
        self.signal_number = signal_number

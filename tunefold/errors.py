"""User-facing errors: raised for bad input or configuration, printed without a traceback."""


class TunefoldError(Exception):
    """An error whose message tells the user what is wrong and where (file, line, key)."""


class ParamsError(TunefoldError):
    pass


class InputError(TunefoldError):
    pass

"""The exception types of kdiag. Every error kdiag raises on purpose derives from KdiagError."""


class KdiagError(Exception):
    """Root of every error that kdiag raises on purpose."""


class ConfigError(KdiagError):
    """A setting or command-line value is invalid."""


class RuleError(KdiagError):
    """A rule document is invalid. The message names the rule, the path inside it and the problem."""

    def __init__(self, rule: str, path: str, problem: str, source: str = "", subject: str = "rule") -> None:
        """`subject` names what `rule` is, e.g. "graph" for a root-cause graph. A problem of a whole
        file (no name and no path) names only the file."""
        self.rule = rule
        self.path = path
        self.problem = problem
        self.source = source
        where = f"{source}: " if source else ""
        if not rule and not path and subject != "rule":
            super().__init__(f"{where}{problem}")
        else:
            super().__init__(f"{where}{subject} {rule!r} at {path or '<root>'}: {problem}")


class DecodeError(KdiagError):
    """A record or input line could not be decoded. The message names what was expected."""


class InputError(KdiagError):
    """A recorded-history input could not be read as any supported format."""

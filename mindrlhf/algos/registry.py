"""Name → function tables for the variants a config selects (KL estimator, advantage estimator,
policy loss, DPO loss).

A variant is one function registered under the string the config uses; adding one touches one place
and no trainer grows an if-chain. Resolve names with ``get`` when a Cell is built (in ``__init__``),
not inside ``construct``: graph mode can call a registered function, but only Python reports an
unknown name as a clear error.
"""


class Registry:
    """A family of interchangeable functions keyed by config name."""

    def __init__(self, family):
        self.family = family  # e.g. "policy loss", used in error messages
        self._fns = {}

    def register(self, name):
        """Decorator: ``@POLICY_LOSSES.register("clip")`` adds the function under ``name``."""

        def add(fn):
            if name in self._fns:
                raise ValueError(
                    f"{self.family} {name!r} is already registered (by {self._fns[name].__module__}."
                    f"{self._fns[name].__name__}); pick another name for {fn.__module__}.{fn.__name__}"
                )
            self._fns[name] = fn
            return fn

        return add

    def get(self, name):
        """The function registered as ``name``; ValueError listing the valid names otherwise."""
        if name not in self._fns:
            raise ValueError(
                f"unknown {self.family} {name!r}; valid names: {', '.join(sorted(self._fns))}"
            )
        return self._fns[name]

    def names(self):
        """Registered names, sorted."""
        return sorted(self._fns)

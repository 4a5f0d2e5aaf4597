"""This machine's measured crossovers for ``auto`` (written by ``python -m fastla tune``).

Each op module's ``AUTO_RULE`` holds the thresholds ``auto`` compares a call's size with (shipped
defaults, measured on the machines the project was built on). ``fastla tune``
(:mod:`fastla.tune`) measures where the compiled kernel starts to beat NumPy on *this* machine and
writes the crossovers to a profile; at import fastla reads it and puts the measured values into
``AUTO_RULE``. Nothing is read when no profile exists (one ``os.path.exists``).

* Where: ``FASTLA_PROFILE`` names the file (``off``: ignore any profile), else
  ``$XDG_CACHE_HOME/fastla/profile.json`` (``~/.cache/fastla/profile.json``).
* Keyed: one file holds entries per machine kind (``fastla.bench.report.machine_key``: LLVM CPU,
  SIMD width, BLAS library and kernel, cores) and per fastla thread count, so a home directory
  shared between machines holds each machine's own numbers. ``fl.set_num_threads(n)`` switches to
  the entry measured at ``n`` threads (shipped defaults where there is none).
* Never trusted blindly: a file that does not parse, has another format version, names a rule that
  does not exist or a value of the wrong type is ignored as a whole, with one ``RuntimeWarning``;
  so is a file named by ``FASTLA_PROFILE`` that has no entry for this machine kind (a foreign one).

:func:`tune_profile` says what is in force; ``fl.explain`` names it in every ``auto`` reason.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import warnings

from fastla import _jit

ENV = "FASTLA_PROFILE"
VERSION = 1
#: A threshold no input reaches: auto never picks the compiled kernel under it.
NEVER = 2**62


class Rules(dict):
    """An op's ``AUTO_RULE``: a dict that counts its changes (``version``), a profile's or a test's
    alike, so that a decision cached from its values knows when it is stale
    (``fastla.matmul._VERDICTS``)."""

    __slots__ = ("version",)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.version = 0

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.version += 1

    def __delitem__(self, key):
        super().__delitem__(key)
        self.version += 1

    def _changed(name):  # the other mutators, each counted as one change
        def method(self, *args, **kwargs):
            result = getattr(dict, name)(self, *args, **kwargs)
            self.version += 1
            return result

        method.__name__ = name
        return method

    update = _changed("update")
    pop = _changed("pop")
    popitem = _changed("popitem")
    clear = _changed("clear")
    setdefault = _changed("setdefault")
    del _changed

    def __ior__(self, other):
        self.update(other)
        return self


#: The thresholds a profile may set: (module, AUTO_RULE key) per knob, named after the op whose
#: auto rule reads it (an op's further knobs: :data:`FURTHER_KNOBS`).
KNOBS = {
    "matmul": ("matmul", "small_min_batch"),
    "matmul_gemm": ("matmul", "gemm_min_work"),  # float64 products
    "matmul_gemm_f32": ("matmul", "gemm_min_work_f32"),  # float32 products
    # stacks of mid-size products: their work (fastla.matmul.stack_work), timed on float64 stacks
    "matmul_stack_work": ("matmul", "packed_stack_min_work"),
    "solve": ("lu", "small_min_batch"),
    "softmax": ("softmax", "min_size"),
    "cosine_similarity": ("similarity", "matrix_min_work"),
    "cosine_topk": ("similarity", "topk_min_work"),
    # not numpy against numba: the numba impl's two kernels (stream the corpus, or pack it)
    "cosine_topk_stream": ("similarity", "topk_packed_min_queries"),
    "scaled_dot_product_attention": ("attention", "min_scores"),
}
#: knobs named otherwise than the op whose rule reads them: knob -> op
FURTHER_KNOBS = {
    "matmul_gemm": "matmul",
    "matmul_gemm_f32": "matmul",
    "matmul_stack_work": "matmul",
    "cosine_topk_stream": "cosine_topk",
}
#: knobs an earlier fastla measured and this one no longer reads, skipped in a profile: knob -> why
#: (a stored value means something else now: applied, it would mislead the rule)
RETIRED = {
    "matmul_stack": "a count of products, where the rule now compares a stack's work (matmul_stack_work)",
}
#: ops whose auto rule reads another op's knob
SHARES = {"log_softmax": "softmax", "cross_entropy": "softmax", "lu_factor": "solve", "lu_solve": "solve"}

_SHIPPED: dict = {}  # (module, key) -> the shipped default, captured before any profile applies
_STATE = {"status": "shipped defaults (no profile loaded yet)", "path": None, "rules": {}, "key": None}
_WARNED: set = set()


def default_path():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastla", "profile.json")


def profile_path():
    """The profile file in use, or None when ``FASTLA_PROFILE=off``."""
    env = os.environ.get(ENV, "")
    if env.strip().lower() == "off":
        return None
    return env or default_path()


def _rule_dict(module):
    return importlib.import_module(f"fastla.{module}").AUTO_RULE


def shipped(op):
    """The shipped default of ``op``'s knob."""
    module, key = KNOBS[op]
    return _SHIPPED.get((module, key), _rule_dict(module)[key])


@functools.cache
def machine_key():
    """The profile's key for this machine kind (that of the benchmark baselines); computed once per
    process (it reads the CPU and BLAS facts, and :func:`load` runs on every thread-count change)."""
    from fastla._host import machine_facts
    from fastla.bench.report import machine_key as key_of

    return key_of(machine_facts())


def _restore_shipped():
    for (module, key), value in _SHIPPED.items():
        _rule_dict(module)[key] = value


def _capture_shipped():
    if not _SHIPPED:
        for module, key in KNOBS.values():
            _SHIPPED[(module, key)] = _rule_dict(module)[key]


def use_shipped():
    """Put the shipped defaults in force (until the next :func:`load`)."""
    _capture_shipped()
    _restore_shipped()
    _STATE.update(rules={}, status="shipped defaults (fastla tune is measuring)")


def validate_rules(rules):
    """``{op: value}`` checked against :data:`KNOBS` (a :data:`RETIRED` knob passes: it is skipped)
    and the shipped values' types; raises ValueError naming the first problem."""
    if not isinstance(rules, dict):
        raise ValueError("rules is not a mapping")
    for op, value in rules.items():
        if op not in KNOBS and op not in RETIRED:
            raise ValueError(f"unknown rule {op!r}")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:  # 0: every size
            raise ValueError(f"rule {op!r}: {value!r} is not a non-negative integer")
    return rules


def _warn_once(msg):
    if msg not in _WARNED:
        _WARNED.add(msg)
        warnings.warn(f"fastla: {msg}; using the shipped auto thresholds", RuntimeWarning, stacklevel=3)


def read(path):
    """The profile file's contents (validated format, entries not yet checked); raises ValueError."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read it ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        got = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"format version {got!r}, expected {VERSION}")
    if not isinstance(data.get("machines"), dict):
        raise ValueError("no 'machines' mapping")
    return data


def load():
    """(Re)apply the profile for this machine kind and fastla's current thread count."""
    _capture_shipped()
    _restore_shipped()
    path = profile_path()
    threads = _jit.get_num_threads()
    _STATE.update(path=path, rules={}, key=None)
    if path is None:
        _STATE["status"] = f"shipped defaults ({ENV}=off)"
        return
    if not os.path.exists(path):
        _STATE["status"] = "shipped defaults (no profile: run `python -m fastla tune`)"
        return
    explicit = bool(os.environ.get(ENV))
    try:
        data = read(path)
        key = _STATE["key"] = machine_key()
        entry = data["machines"].get(key)
        if entry is None:
            if explicit:
                others = ", ".join(sorted(data["machines"])) or "none"
                raise ValueError(f"measured on other machines ({others}), not {key}")
            _STATE["status"] = f"shipped defaults (the profile has no entry for {key})"
            return
        per_threads = entry.get("threads") if isinstance(entry, dict) else None
        if not isinstance(per_threads, dict):
            raise ValueError(f"entry {key}: no 'threads' mapping")
        for n, record in per_threads.items():  # check every entry, not only the one in use
            if not isinstance(record, dict):
                raise ValueError(f"entry {key}, {n} threads: not a mapping")
            validate_rules(record.get("rules"))
        record = per_threads.get(str(threads))
    except ValueError as exc:
        _STATE["status"] = f"shipped defaults (profile {path} ignored: {exc})"
        _warn_once(f"ignoring the auto profile {path}: {exc}")
        return
    if record is None:
        _STATE["status"] = f"shipped defaults (the profile has no entry for {threads} threads)"
        return
    rules = {op: value for op, value in record["rules"].items() if op not in RETIRED}
    for op, value in rules.items():
        module, key = KNOBS[op]
        _rule_dict(module)[key] = value
    _STATE["rules"] = rules
    _STATE["status"] = f"tuned profile {path} ({threads} threads, measured {record.get('when', '?')})"
    retired = sorted(set(record["rules"]) - set(rules))
    if retired:
        skipped = "; ".join(f"{op}: {RETIRED[op]}" for op in retired)
        _STATE["status"] += f"; skipped the retired knobs ({skipped}): `python -m fastla tune` measures again"


def write(path, key, threads, record):
    """Add or replace the entry (machine ``key``, ``threads``) in the profile at ``path``."""
    validate_rules(record["rules"])
    data = {"version": VERSION, "machines": {}}
    if os.path.exists(path):
        try:
            data = read(path)
        except ValueError:
            pass  # a corrupt file is replaced
    entry = data["machines"].setdefault(key, {"threads": {}})
    entry.setdefault("threads", {})[str(threads)] = record
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # atomic: a reader sees the old file or the new one


def knob_op(knob):
    """The public op whose auto rule reads ``knob`` (a key of :data:`KNOBS`)."""
    return FURTHER_KNOBS.get(knob, knob)


def note(op_name):
    """What decided ``op_name``'s auto thresholds, for :func:`fastla.explain` ("" for ops without
    a tunable threshold)."""
    op = SHARES.get(op_name, op_name)
    parts = []
    for knob in (k for k in KNOBS if knob_op(k) == op):
        module, key = KNOBS[knob]
        value = _rule_dict(module)[key]
        if knob in _STATE["rules"]:
            parts.append(f"{key}={value} measured here (shipped {shipped(knob)})")
        else:
            parts.append(f"{key}={value}")
    return f"{', '.join(parts)}: {_STATE['status']}" if parts else ""


def tune_profile():
    """What sets ``auto``'s thresholds now: ``{"status", "path", "machine", "rules", "shipped"}``.

    ``rules`` holds the measured values in force (empty under shipped defaults), ``shipped`` the
    defaults they replace.

    Examples
    --------
    >>> import fastla
    >>> sorted(fastla.tune_profile())
    ['machine', 'path', 'rules', 'shipped', 'status']
    """
    return {
        "status": _STATE["status"],
        "path": _STATE["path"],
        "machine": _STATE["key"],
        "rules": copy.deepcopy(_STATE["rules"]),
        "shipped": {op: shipped(op) for op in KNOBS},
    }
